"""Kill a real training process: SIGTERM/SIGINT mid-run write a checkpoint at the current step
and exit 128+signum (nothing lost); SIGKILL loses at most the steps since the last save. In
every case ``--resume`` finishes with the weights and loss curve of an uninterrupted run. The run
keeps an EMA of the weights (``--ema``), so the EMA (final/) and the raw weights (final_raw/)
must both come out bit-identical."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 60, 7
ARGS = ["train", "dae", "--steps", str(STEPS), "--ckpt-every", str(EVERY), "--resolution", "16",
        "--batch-size", "4", "--eval-size", "4", "--sample-n", "2", "--set", "channels=8", "--ema", "0.9", "--quiet"]


def _cmd(out, *extra):
    return [sys.executable, "-m", "dalle2_fast.cli", *ARGS, "--out", str(out), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _ckpts(out):
    d = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in d.glob("step_*")) if d.exists() else []


def _weights(out, final="final"):
    return load_file(str(out / final / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(_cmd(out), env=_env(), check=True, timeout=120)
    return out


def _kill_after_first_save(out, sig):
    p = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not _ckpts(out):  # wait for the first checkpoint, then interrupt mid-run
        assert p.poll() is None and time.time() - t0 < 90, "training ended before the first checkpoint"
        time.sleep(0.02)
    os.kill(p.pid, sig)
    p.wait(timeout=60)
    return p.returncode, p.stdout.read().decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_bit_exactly(sig, straight, tmp_path):
    out = tmp_path / "run"
    rc, log = _kill_after_first_save(out, sig)
    ck = _ckpts(out)
    assert ck and ck[-1] < STEPS, (rc, log)  # really interrupted mid-run
    rows = list(csv.DictReader(open(out / "loss.csv")))
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        assert ck[-1] % EVERY == 0  # only the periodic saves happened
    else:
        assert rc == 128 + sig, log
        assert f"checkpoint written at step {ck[-1]}" in log
        assert len(rows) == ck[-1]  # the step being run when the signal came was saved: nothing lost
    assert not (out / "final").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left behind
    subprocess.run(_cmd(out, "--resume"), env=_env(), check=True, timeout=120)
    for final in ("final", "final_raw"):  # the EMA and the raw weights
        a, b = _weights(straight, final), _weights(out, final)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), final
    assert list(csv.DictReader(open(straight / "loss.csv"))) == list(csv.DictReader(open(out / "loss.csv")))
