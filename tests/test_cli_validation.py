"""Bad command-line values fail before any work with an error naming the option, what was
expected and what was got."""
import pytest

from dalle2_fast.cli import main


def _train(tmp_path, *extra, model="ae"):
    return main(["train", model, "--out", str(tmp_path / "run"), "--quiet", *extra])


@pytest.mark.parametrize("extra,match", [
    (["--steps", "0"], r"--steps: expected a positive finite number, got 0"),
    (["--batch-size", "-4"], r"--batch-size: expected a positive .* got -4"),
    (["--ckpt-every", "0"], r"--ckpt-every: expected a positive"),
    (["--lr", "nan"], r"--lr: expected a positive finite number, got nan"),  # nan > 0 is False: caught
    (["--lr", "inf"], r"--lr: expected a positive finite number, got inf"),
    (["--keep-last", "0"], r"--keep-last: expected >= 1"),
    (["--data", "/no/such/folder"], r"--data: expected 'shapes' or an image folder"),
])
def test_train_bad_numbers_and_paths(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        _train(tmp_path, *extra)
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_train_unwritable_out(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"--out: expected a directory, got an existing file"):
        main(["train", "ae", "--out", str(blocker), "--quiet"])
    with pytest.raises(ValueError, match=r"--out: cannot write under .*a_file/sub.* is not a writable directory"):
        main(["train", "ae", "--out", str(blocker / "sub"), "--quiet"])


def test_unknown_model_names_the_argument(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "dalle9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument model: invalid choice: 'dalle9'" in err and "vqvae2" in err  # lists the choices


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from dalle2_fast.models import GAN, GANConfig
    path = tmp_path_factory.mktemp("gan") / "final"
    GAN(GANConfig(resolution=16, g_width=8, d_width=8)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("extra,match", [
    (["-n", "0"], r"-n: expected a positive"),
    (["--temperature", "0"], r"--temperature: expected a positive finite number, got 0"),
    (["--temperature", "-1.5"], r"--temperature: .* got -1.5"),
    (["--label", "  "], r"--label: expected a class id or '<colour> <shape>', got an empty string"),
    (["--images-dir", "x", "--batch-size", "0"], r"--batch-size: expected a positive"),
])
def test_sample_bad_values(ckpt, tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        main(["sample", ckpt, "--out", str(tmp_path / "g.png"), *extra])


def test_sample_bad_paths(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint: no such file or directory"):
        main(["sample", str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match=r"--out: expected a file path, got the directory"):
        main(["sample", ckpt, "--out", str(tmp_path)])
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"--images-dir: expected a directory, got an existing file"):
        main(["sample", ckpt, "--images-dir", str(tmp_path / "f")])


def test_sample_images_rejects_an_autoencoder(tmp_path):
    from dalle2_fast.models import AEConfig, AutoEncoder
    AutoEncoder(AEConfig(resolution=16, channels=8)).save_pretrained(tmp_path / "ae")
    with pytest.raises(ValueError, match=r"AutoEncoder is not a generative model"):
        main(["sample", str(tmp_path / "ae"), "--images-dir", str(tmp_path / "imgs")])


def test_grid_sampling_refuses_torchrun(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"under torchrun .* pass --images-dir"):
        main(["sample", ckpt, "--out", str(tmp_path / "g.png")])
