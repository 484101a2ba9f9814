"""Prompt-file jobs on a tiny random unCLIP pipeline: a real subprocess killed with SIGTERM or
SIGKILL mid-job, restarted with the same command (in one process or two ranks), finishes with a
directory byte-identical to an uninterrupted run; corrupt, missing and half-written files are
redrawn; a restart with other settings, prompts or model is refused with the differences listed."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from dalle2_fast.cli import main
from dalle2_fast.jobs.manifest import PARTS
from tests._tiny_pipeline import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
LINES = [{"prompt": "a red circle", "n": 5, "seed": 1000}, {"prompt": "a blue square", "decoder_steps": 3}] + [
    {"prompt": f"a green triangle {k}"} for k in range(10)] + [{"prompt": "a yellow star", "n": 9}]
TOTAL = 5 + 2 + 20 + 9


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("job")
    save_tiny_pipeline(d / "pipe")
    (d / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in LINES))
    return d


def _argv(d, out, *extra):
    return ["sample", "--prompts-file", str(d / "prompts.jsonl"), "--pipeline", str(d / "pipe"), "-n", "2",
            "--batch-size", "3", "--seed", "7", "--images-dir", str(out), *extra]


def _main_one_thread(argv):
    """The job records threads per process; the subprocesses run with OMP_NUM_THREADS=1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def straight(setup):
    out = setup / "straight"
    assert _main_one_thread(_argv(setup, out, "--quiet")) == 0
    return out


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _chunk_ends(d):
    """Images done after each chunk (chunks break at 3 images and where a line's options change)."""
    from itertools import accumulate

    from dalle2_fast.jobs.plan import iter_chunks, iter_items
    from dalle2_fast.jobs.prompts import iter_prompt_file

    chunks = iter_chunks(iter_items(iter_prompt_file(d / "prompts.jsonl"), 2, 7), 3)
    return list(accumulate(len(c.items) for c in chunks))


def _journal_lines(out):
    return sum(len(p.read_text().splitlines()) for p in (out / PARTS).glob("*.jsonl")) if (out / PARTS).exists() else 0


def test_uninterrupted_job(straight, setup):
    files = _files(straight)
    assert sorted(files) == [f"{i:06d}.png" for i in range(TOTAL)] + ["job.json", "manifest.jsonl"]
    recs = [json.loads(x) for x in files["manifest.jsonl"].decode().splitlines()]
    assert [r["index"] for r in recs] == list(range(TOTAL))
    # seeds: the first line names its own (1000..1004); the others are job seed 7 + image index
    assert [r["seed"] for r in recs[:8]] == [1000, 1001, 1002, 1003, 1004, 12, 13, 14]
    assert recs[5]["settings"]["decoder_steps"] == 3 and recs[7]["settings"]["decoder_steps"] == 2
    import hashlib

    assert all(hashlib.sha256(files[r["file"]]).hexdigest() == r["sha256"] for r in recs)
    meta = json.loads(Image.open(straight / "000006.png").text["dalle2_fast"])
    assert meta["prompt"] == "a blue square" and meta["seed"] == 13 and meta["index"] == 6
    assert "elapsed_s" not in meta and "time" not in json.dumps(meta)  # no times: a rerun writes the same bytes


def test_a_job_draws_what_the_pipeline_draws(setup, tmp_path):
    """A one-prompt job = ``pipe.iter_images(prompt, n, seed, batch_size)``, image for image."""
    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.data.images import to_uint8

    assert _main_one_thread(["sample", "a purple diamond", "-n", "5", "--batch-size", "2", "--seed", "3", "--quiet",
                             "--pipeline", str(setup / "pipe"), "--images-dir", str(tmp_path / "o")]) == 0
    pipe = UnCLIPPipeline.from_pretrained(setup / "pipe")
    with torch.no_grad():
        ref = [g.image for b in pipe.iter_images("a purple diamond", 5, seed=3, batch_size=2) for g in b]
    for k, img in enumerate(ref):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / f"{k:06d}.png")), to_uint8(img))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, argv):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    main(argv)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_job_resumes_byte_identically(sig, setup, straight, tmp_path):
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "dalle2_fast.cli", *_argv(setup, out)]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while _journal_lines(out) < 3:  # the first chunk is written: interrupt mid-job
        assert p.poll() is None and time.time() - t0 < 120, p.stdout.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(p.pid, sig)
    p.wait(timeout=60)
    log = p.stdout.read().decode()
    written = _journal_lines(out)
    assert 3 <= written < TOTAL and not (out / "manifest.jsonl").exists(), log  # really stopped mid-job
    if sig == signal.SIGTERM:
        assert p.returncode == 128 + sig and "stopped by signal 15" in log, log
        assert written in _chunk_ends(setup)  # it finished the chunk it was drawing, then stopped
    else:
        assert p.returncode == -signal.SIGKILL
    if sig == signal.SIGTERM:  # the same command, one process (this one: it saves a process start)
        assert _main_one_thread(_argv(setup, out, "--quiet")) == 0
    else:  # continued by two ranks (torchrun-style): each rank draws only what is missing of its chunks
        mp.spawn(_rank, args=(2, _free_port(), _argv(setup, out, "--quiet")), nprocs=2, join=True)
    assert _files(out) == _files(straight)


def test_corrupt_missing_and_half_written_files_are_redrawn(setup, straight, tmp_path, capsys):
    out = tmp_path / "job"
    shutil.copytree(straight, out)
    (out / "000003.png").write_bytes((out / "000003.png").read_bytes()[:100])  # truncated
    (out / "000020.png").unlink()                                             # missing
    (out / ".000021.png.tmp-999").write_bytes(b"half")                        # a kill's temp file
    assert _main_one_thread(_argv(setup, out)) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{TOTAL - 2} kept" in last and "2 drawn" in last and "1 redrawn" in last, last
    assert _files(out) == _files(straight)


def test_restart_with_other_settings_prompts_or_model_is_refused(setup, straight, tmp_path):
    before = _files(straight)
    with pytest.raises(ValueError, match=r"Differences: settings.decoder_steps: 2 in the job, 4 now"):
        _main_one_thread(_argv(setup, straight, "--decoder-steps", "4"))
    with pytest.raises(ValueError, match=r"batch_size: 3 in the job, 4 now"):
        _main_one_thread([*_argv(setup, straight), "--batch-size", "4"])
    other = tmp_path / "other.jsonl"
    other.write_text((setup / "prompts.jsonl").read_text().replace("red", "pink"))
    argv = _argv(setup, straight)
    argv[argv.index("--prompts-file") + 1] = str(other)
    with pytest.raises(ValueError, match=r"prompts.sha256: '[0-9a-f]+' in the job, '[0-9a-f]+' now"):
        _main_one_thread(argv)
    save_tiny_pipeline(tmp_path / "pipe2", seed=1)
    argv = _argv(setup, straight)
    argv[argv.index("--pipeline") + 1] = str(tmp_path / "pipe2")
    with pytest.raises(ValueError, match=r"model.sha256: .* in the job, .* now"):
        _main_one_thread(argv)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match=r"runtime.threads: 1 in the job, 2 now"):
            main(_argv(setup, straight))
    finally:
        torch.set_num_threads(n)
    assert _files(straight) == before  # nothing touched
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds files but no job.json"):
        _main_one_thread(_argv(setup, tmp_path / "stuff"))


def test_bad_job_arguments_fail_before_any_model_loads(setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b", "n": -1}\n')
    argv = _argv(setup, tmp_path / "o")
    argv[argv.index("--prompts-file") + 1] = str(bad)
    with pytest.raises(ValueError, match=r"bad.jsonl:2: n: expected an integer"):
        main(argv)
    with pytest.raises(ValueError, match=r"--prompts-file: writes one PNG per image; give --images-dir"):
        main(["sample", "--prompts-file", str(bad)])
    with pytest.raises(ValueError, match=r"PROMPT... or --prompts-file FILE, not both"):
        main(["sample", "a", "--prompts-file", str(bad), "--images-dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match=r"--prompts-file: no such file"):
        main(["sample", "--prompts-file", str(tmp_path / "none.txt"), "--images-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
