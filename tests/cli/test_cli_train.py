"""The command line: train a tiny model for a few steps and write its files; exact --resume;
sample from the checkpoint alone; the bench/info subcommands."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from dalle2_fast.cli import UsageError, main

TINY = ["--resolution", "16", "--batch-size", "4", "--eval-size", "8", "--sample-n", "4", "--quiet"]


def _train(model, out, steps, *extra):
    return main(["train", model, "--steps", str(steps), "--out", str(out), *TINY, *extra])


@pytest.mark.parametrize("model,sets", [
    ("gan", ["--set", "g_width=8", "--set", "d_width=8", "--set", "loss=hinge"]),
    ("vae", ["--set", "channels=8"]),
    ("vqvae2", ["--set", "channels=8", "--set", "num_codes=16", "--set", "code_dim=4"]),
])
def test_train_writes_its_files_then_sample(model, sets, tmp_path):
    out = tmp_path / model
    assert _train(model, out, 3, "--ckpt-every", "2", *sets) == 0
    for f in ("loss.csv", "loss.png", "samples.png", "metrics.json", "train_config.json",
              "final/model.safetensors", "final/config.json"):
        assert (out / f).exists(), f
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    assert main(["sample", "--checkpoint", str(out), "-n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_resume_continues_exactly(tmp_path):
    """3 steps + --resume to 6 equals 6 steps straight: weights, optimizer, RNG, data position.
    The DAE draws corruption noise from the global RNG, so a lost RNG state would show."""
    sets = ["--set", "channels=8", "--ckpt-every", "3"]
    _train("dae", tmp_path / "straight", 6, *sets)
    _train("dae", tmp_path / "split", 3, *sets)
    _train("dae", tmp_path / "split", 6, "--resume", *sets)
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = list(csv.DictReader(open(tmp_path / "straight" / "loss.csv")))
    lb = list(csv.DictReader(open(tmp_path / "split" / "loss.csv")))
    assert la == lb  # the CSV continues too, with no duplicated steps


def test_ema_is_the_final_model(tmp_path):
    """--ema 0.5: final/ is the exponential moving average of the weights after each step
    (e_1 = w_1, e_k = d_k e_(k-1) + (1 - d_k) w_k with the warmed-up decay
    d_k = min(0.5, k / (9 + k))), recomputed here from the per-step checkpoints; final_raw/ is
    the last raw weights; mismatched --ema on --resume is refused."""
    out = tmp_path / "ema"
    _train("dae", out, 3, "--set", "channels=8", "--ckpt-every", "1", "--keep-last", "3", "--ema", "0.5")
    w = [load_file(str(out / "checkpoints" / f"step_{k:08d}" / "model.safetensors")) for k in (1, 2, 3)]
    final = load_file(str(out / "final" / "model.safetensors"))
    raw = load_file(str(out / "final_raw" / "model.safetensors"))
    assert final.keys() == w[0].keys()
    for k in final:
        torch.testing.assert_close(raw[k], w[2][k], rtol=0, atol=0)
        if final[k].is_floating_point():
            want = w[0][k]
            for j in (1, 2):  # update j + 1; j updates done before it
                d = min(0.5, (1 + j) / (10 + j))
                want = d * want + (1 - d) * w[j][k]
            torch.testing.assert_close(final[k], want, rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    assert json.loads((out / "metrics.json").read_text())["ema"] == 0.5
    with pytest.raises(ValueError, match="--ema 0.5, not 0.9"):
        _train("dae", out, 4, "--set", "channels=8", "--resume", "--ema", "0.9")
    with pytest.raises(ValueError, match=r"--ema: expected a decay in \[0, 1\)"):
        _train("dae", tmp_path / "bad", 1, "--ema", "1")


def test_vqvae2_prior_trains_on_a_vqvae2_and_samples_by_label(tmp_path):
    vq = ["--set", "channels=8", "--set", "num_codes=16", "--set", "code_dim=4"]
    _train("vqvae2", tmp_path / "vq", 2, *vq)
    assert _train("vqvae2-prior", tmp_path / "prior", 2, "--vqvae", str(tmp_path / "vq" / "final"),
                  "--set", "channels=8", "--set", "n_layers=2", "--set", "attention_every=2") == 0
    m = json.loads((tmp_path / "prior" / "metrics.json").read_text())
    assert 0 <= m["sample_recognition_rate"] <= 1 and m["heldout_top_nll"] > 0
    assert main(["sample", "--checkpoint", str(tmp_path / "prior" / "final"), "-n", "2", "--label", "red circle",
                 "--out", str(tmp_path / "p.png")]) == 0


def test_cli_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs --vqvae"):
        _train("vqvae2-prior", tmp_path / "p", 1)
    with pytest.raises(ValueError, match="has no field 'chanels'"):
        _train("ae", tmp_path / "a", 1, "--set", "chanels=8")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        _train("ae", tmp_path / "b", 1, "--resume")
    with pytest.raises(UsageError, match="invalid choice: 'nosuchmodel'"):
        main(["train", "nosuchmodel"])


def test_bench_subcommand_is_wired():
    try:
        import dalle2_fast.bench.cli  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="benchmark harness is not available"):
            main(["bench"])
        return
    with pytest.raises(SystemExit) as e:  # options after 'bench' reach the harness's own parser
        main(["bench", "--ops", "no-such-family"])
    assert e.value.code == 2


def test_info_subcommand_runs(capsys):
    assert main(["info"]) == 0
    assert "torch" in capsys.readouterr().out
