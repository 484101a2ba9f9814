"""Command-line fuzzing: random command lines built from the real verbs, flags and hostile values
(empty strings, NaN, huge and negative numbers, paths that do not exist or cannot be written,
very long prompts, non-UTF-8-ish text). Every run must end in one of two ways: our own one-line
error on stderr with exit status 2, or the point where real work would start (model loading,
training, sampling — stubbed here so the fuzzer stays fast). Never a traceback, never a file
written outside the run's directory."""
import random
from pathlib import Path

import pytest

import dalle2_fast.cli as cli


class ReachedWork(Exception):
    """Raised by the stubs: the command line was accepted and work would start here."""


@pytest.fixture
def stubbed(monkeypatch):
    import dalle2_fast.generate as generate
    import dalle2_fast.pipeline as pipeline
    import dalle2_fast.recipes.unclip as unclip
    import dalle2_fast.train.loop as loop

    def stop(*a, **k):
        raise ReachedWork

    monkeypatch.setattr(pipeline.UnCLIPPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: stop()))
    monkeypatch.setattr(generate, "CheckpointSampler", stop)
    monkeypatch.setattr(loop, "train", stop)
    monkeypatch.setattr(unclip, "train_unclip", stop)
    import dalle2_fast.eval.captions as captions

    monkeypatch.setattr(captions, "evaluate_pipeline", stop)


VALUES = ["", " ", "0", "-1", "-5", "1", "3", "2.5", "nan", "inf", "-inf", "1e308", "99999999999999999999",
          "abc", "a red circle", "x" * 3000, "../../etc/passwd", "/dev/null", "/proc/nope/x.png", "out.png",
          "out.jpg", "out", "dir/", "ünïcödé ☃", "--", "-n", "true", "none", "shape", "cfg", "ddim", "1,2,3"]
VERBS = {
    "sample": ["-n", "-o", "--out", "--images-dir", "--seed", "--batch-size", "--max-grid", "--pipeline",
               "--prior-steps", "--decoder-steps", "--upsampler-steps", "--prior-guidance", "--decoder-guidance",
               "--checkpoint", "--sampler", "--steps", "--eta", "--guidance", "--scale", "--classifier", "--label",
               "--temperature", "--metrics", "--quiet", "--decoder-text-guidance", "--decoder-sampler"],
    "variations": ["-n", "-o", "--seed", "--pipeline", "--decoder-steps", "--upsampler-steps", "--decoder-guidance",
                   "--latent", "--eta", "--decoder-image-guidance", "--upsampler-sampler"],
    "interpolate": ["-n", "-o", "--seed", "--pipeline", "--decoder-steps", "--latent"],
    "text-diff": ["--from", "--to", "--max-angle", "--invert", "--no-invert", "-n", "-o", "--seed", "--pipeline"],
    "train": ["--out", "--seed", "--max-minutes", "--steps", "--batch-size", "--lr", "--resume", "--ckpt-every",
              "--keep-last", "--eval-size", "--sample-n", "--ema", "--resolution", "--data", "--set", "--vqvae",
              "--classes", "--bpd-n", "--sample-steps", "--scale", "--stages", "--upsample-res", "--quiet"],
    "eval": ["--pipeline", "--out", "--seed", "--n-single", "--n-two"],
}
POSITIONAL = {"sample": ["a red circle", "a blue star"], "variations": ["img.png"], "interpolate": ["a.png", "b.png"],
              "text-diff": ["img.png"], "train": ["gan", "adm", "unclip", "clip", "nope"], "eval": []}
FLAGS_ONLY = {"--quiet", "--invert", "--no-invert", "--resume"}


def _argv(rng: random.Random, tmp: Path) -> list[str]:
    verb = rng.choice(sorted(VERBS))
    argv = [verb]
    for _ in range(rng.randint(0, 2)):
        if POSITIONAL[verb] and rng.random() < 0.8:
            argv.append(rng.choice(POSITIONAL[verb]))
    for _ in range(rng.randint(0, 5)):
        flag = rng.choice(VERBS[verb])
        argv.append(flag)
        if flag not in FLAGS_ONLY:
            v = rng.choice(VALUES)
            if flag in ("-o", "--out", "--images-dir", "--metrics") and rng.random() < 0.7:
                v = str(tmp / v.lstrip("/")) if v else v  # outputs stay inside the run directory ...
            argv.append(v)
    return argv


def test_random_command_lines_end_in_our_error_or_reach_work(stubbed, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img.png").write_bytes(b"not really a png")
    rng = random.Random(20261201)
    outcomes = {"error": 0, "work": 0, "help": 0}
    before = set(tmp_path.parent.iterdir())
    for i in range(400):
        argv = _argv(rng, tmp_path)
        try:
            rc = cli.console(argv)
        except ReachedWork:
            outcomes["work"] += 1
            continue
        except SystemExit as e:  # argparse's --help / version only
            assert e.code == 0, (argv, e.code)
            outcomes["help"] += 1
            continue
        err = capsys.readouterr().err
        assert rc == 2, (argv, rc, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("dalle2-fast: error: "), (argv, err)
        assert "Traceback" not in err
        outcomes["error"] += 1
    print(outcomes)
    assert outcomes["error"] > 100 and outcomes["work"] > 5, outcomes  # the fuzzer reaches both ends
    assert set(tmp_path.parent.iterdir()) == before  # nothing written beside the run directory
    assert not any(p.suffix == ".png" and p.name != "img.png" for p in tmp_path.rglob("*"))  # nor in it


@pytest.mark.parametrize("argv,match", [
    (["sample", "a red circle", "--decoder-steps", "0"], "--decoder-steps: expected an integer >= 1"),
    (["sample", "a red circle", "-o", "/proc/nope/x.png"], "-o/--out: cannot write"),
    (["variations", "img.png", "--seed", "-1"], r"--seed: expected an integer in \[0, 2\^63 - 1\]"),
    (["text-diff", "img.png", "--from", "a", "--to", "b", "--max-angle", "nan"], "--max-angle"),
    (["train", "gan", "--lr", "-1"], "--lr: expected a positive finite number"),
    (["train", "adm", "--set", "no_such=1", "--out", "r"], None),  # reaches the task build: an unknown field
])
def test_examples_of_the_fuzz_corpus(stubbed, tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    try:
        rc = cli.console(argv)
    except ReachedWork:
        assert match is None
        return
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    if match:
        import re

        assert re.search(match, err), err
