"""Bad command-line values fail before any work with an error naming the flag the user typed,
what was expected and what was got; prompts and checkpoints are separate arguments (nothing is
guessed from the text); the console reports one line and exit status 2, never a traceback."""
import pytest

from dalle2_fast.cli import UsageError, console, main


def _train(tmp_path, *extra, model="ae"):
    return main(["train", model, "--out", str(tmp_path / "run"), "--quiet", *extra])


@pytest.mark.parametrize("extra,match", [
    (["--steps", "0"], r"--steps: expected an integer >= 1, got 0"),
    (["--batch-size", "-4"], r"--batch-size: expected an integer >= 1, got -4"),
    (["--ckpt-every", "0"], r"--ckpt-every: expected an integer >= 1"),
    (["--lr", "nan"], r"--lr: expected a positive finite number, got nan"),  # nan > 0 is False: caught
    (["--lr", "inf"], r"--lr: expected a positive finite number, got inf"),
    (["--keep-last", "0"], r"--keep-last: expected an integer >= 1"),
    (["--data", "/no/such/folder"], r"--data: expected 'shapes' or an image folder"),
    (["--seed", "-5"], r"--seed: expected an integer in \[0, 2\^63 - 1\], got -5"),
    (["--scale", "0.5"], r"--scale: apply to `train unclip`, not to `train ae`"),
])
def test_train_bad_numbers_and_paths(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        _train(tmp_path, *extra)
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_train_unclip_refuses_loop_flags(tmp_path):
    with pytest.raises(ValueError, match=r"--steps: apply to the suite models; `train unclip`"):
        main(["train", "unclip", "--out", str(tmp_path / "u"), "--steps", "3"])
    with pytest.raises(ValueError, match=r"--stages: unknown stages \['nope'\]"):
        main(["train", "unclip", "--out", str(tmp_path / "u"), "--stages", "nope"])


def test_train_unwritable_out(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"--out: expected a directory, got an existing file"):
        main(["train", "ae", "--out", str(blocker), "--quiet"])
    with pytest.raises(ValueError, match=r"--out: cannot write under .*a_file/sub.* is not a writable directory"):
        main(["train", "ae", "--out", str(blocker / "sub"), "--quiet"])


def test_unknown_model_names_the_argument(capsys):
    with pytest.raises(UsageError, match=r"argument model: invalid choice: 'dalle9'.*vqvae2"):
        main(["train", "dalle9"])
    assert console(["train", "dalle9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'dalle9'" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from dalle2_fast.models import GAN, GANConfig
    path = tmp_path_factory.mktemp("gan") / "final"
    GAN(GANConfig(resolution=16, g_width=8, d_width=8)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("extra,match", [
    (["-n", "0"], r"-n: expected an integer >= 1"),
    (["--temperature", "0"], r"--temperature: expected a finite number in"),
    (["--temperature", "-1.5"], r"--temperature: .* got -1.5"),
    (["--label", "  "], r"--label: a GAN takes no label"),
    (["--images-dir", "x", "--batch-size", "0"], r"--batch-size: expected an integer >= 1"),
    (["--seed", "-1"], r"--seed: expected an integer in \[0, 2\^63 - 1\], got -1"),
    (["--prior-steps", "3"], r"--prior-steps: apply to text prompts"),
    (["--fast-convs"], r"--fast-convs: apply to text prompts"),
    (["-n", "5000"], r"-n: 5000 images do not fit one grid \(--max-grid 1024\).*--images-dir"),
])
def test_sample_checkpoint_bad_values(ckpt, tmp_path, extra, match):
    out = [] if "--images-dir" in extra else ["--out", str(tmp_path / "g.png")]
    with pytest.raises(ValueError, match=match):
        main(["sample", "--checkpoint", ckpt, *out, *extra])
    assert not (tmp_path / "g.png").exists()


def test_sample_bad_paths(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--checkpoint: no such file or directory"):
        main(["sample", "--checkpoint", str(tmp_path / "nothing")])
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match=r"-o/--out: expected a file path, got the directory"):
        main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "d.png")])
    with pytest.raises(ValueError, match=r"-o/--out: expected a file name ending in .png"):
        main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "grid")])
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"--images-dir: expected a directory, got an existing file"):
        main(["sample", "--checkpoint", ckpt, "--images-dir", str(tmp_path / "f")])
    with pytest.raises(ValueError, match=r"-o/--out: cannot write .*f/g.png"):
        main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "f" / "g.png")])


def test_prompts_are_never_taken_for_paths(tmp_path):
    """A prompt with '/' or ending in '.json', or longer than a file name may be, is a prompt:
    the errors below come from flag checks made before the pipeline loads (no 'checkpoint: no such
    file', no 'File name too long')."""
    long = "a red circle " * 40  # 520 characters: more than a file name can hold
    for prompt in ("a red/blue circle", "config.json", long):
        with pytest.raises(ValueError, match=r"-o/--out: expected a file name ending in .png"):
            main(["sample", prompt, "-o", str(tmp_path / "x.jpgx")])
    with pytest.raises(ValueError, match=r"PROMPT: expected non-empty text, got ''"):
        main(["sample", "", "-o", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match=r"PROMPT: a prompt of 5000 characters"):
        main(["sample", "x" * 5000, "-o", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match=r"give one or more PROMPTs, --prompts-file FILE, or --checkpoint"):
        main(["sample"])
    with pytest.raises(ValueError, match=r"not both"):
        main(["sample", "a red circle", "--checkpoint", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--steps, --label: apply to --checkpoint"):
        main(["sample", "a red circle", "--steps", "3", "--label", "x", "-o", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match=r"-n: 100000 images do not fit one grid"):
        main(["sample", "a red circle", "-n", "100000", "-o", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match=r"--decoder-guidance: expected a finite number in \[0, 100\], got nan"):
        main(["sample", "a red circle", "--decoder-guidance", "nan", "-o", str(tmp_path / "x.png")])
    with pytest.raises(FileNotFoundError, match=r"--pipeline: no such directory"):
        main(["sample", "a red circle", "--pipeline", str(tmp_path / "none"), "-o", str(tmp_path / "x.png")])
    assert not list(tmp_path.glob("*.png"))


def test_grid_sampling_refuses_torchrun(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"under torchrun .* pass --images-dir"):
        main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "g.png")])


def test_edit_commands_check_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"IMAGE .*: no such image file"):
        main(["variations", str(tmp_path / "none.png"), "-o", str(tmp_path / "v.png")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"is not an image Pillow can read"):
        main(["variations", str(tmp_path / "bad.png"), "-o", str(tmp_path / "v.png")])
    with pytest.raises(ValueError, match=r"-n: interpolate needs at least 2 frames"):
        main(["interpolate", "a.png", "b.png", "-n", "1"])
    with pytest.raises(ValueError, match=r"--max-angle: expected a finite number in"):
        main(["text-diff", "a.png", "--from", "x", "--to", "y", "--max-angle", "2"])
    with pytest.raises(ValueError, match=r"--from: expected a non-empty caption"):
        main(["text-diff", "a.png", "--from", " ", "--to", "y"])
