"""The U-Net family through the command line: a tiny ADM U-Net and a tiny noisy classifier
train a few steps on the shapes data (``dalle2-fast train adm|classifier|ddpm``), resume
exactly, load back with ``load_pretrained`` and sample through ``dalle2-fast sample`` with the
DDIM and DPM-Solver++ samplers, with and without classifier guidance and CFG."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_fast.checkpoint import CheckpointError, load_pretrained
from dalle2_fast.cli import main
from dalle2_fast.models import DiffusionModel, NoisyClassifier, UNet
from dalle2_fast.data.labels import label_names, labels_from_class_ids
from dalle2_fast.generate import parse_class_label
from dalle2_fast.recipes.common import parse_field

# 16 channels, two levels, one res block, attention at 16x16, 20 diffusion steps: seconds on CPU
TINY = ["--set", "model_channels=16", "--set", "channel_mult=1,2", "--set", "num_res_blocks=1",
        "--set", "attention_resolutions=16", "--set", "num_head_channels=16", "--set", "num_groups=8",
        "--set", "num_timesteps=20"]
FAST_EVAL = ["--eval-size", "8", "--bpd-n", "2", "--sample-n", "4", "--sample-steps", "4", "--quiet"]


def _train(model, out, steps=3, extra=()):
    assert main(["train", model, "--steps", str(steps), "--batch-size", "4", "--out", str(out), *TINY,
                 *FAST_EVAL, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet_runs")
    return {"adm": _train("adm", root / "adm"), "clf": _train("classifier", root / "clf"), "root": root}


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_train_writes_the_usual_outputs(runs):
    for name in ("adm", "clf"):
        out = runs[name]
        for f in ("loss.csv", "loss.png", "samples.png", "metrics.json", "train_config.json", "final/config.json"):
            assert (out / f).exists(), f"{name}: missing {f}"
        rows = (out / "loss.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + 3 and rows[0].startswith("step,loss")
    m = json.loads((runs["adm"] / "metrics.json").read_text())
    assert m["var_type"] == "learned_range" and m["label_kind"] == "shape"
    assert np.isfinite(m["heldout_bpd"]) and m["heldout_bpd"] > 0
    assert 0.0 <= m["sample_recognition_rate"] <= 1.0
    c = json.loads((runs["clf"] / "metrics.json").read_text())
    assert {"heldout_acc_t0", "heldout_acc_t10"} <= set(c)


def test_checkpoints_load_with_the_one_format(runs, tmp_path):
    dm = load_pretrained(runs["adm"] / "final")
    assert isinstance(dm, DiffusionModel) and dm.config.num_classes == 5 and dm.null_label == 5
    assert dm.config.class_names == ("circle", "square", "triangle", "diamond", "star")
    assert dm.config.unet.num_classes == 6 and dm.config.unet.learn_sigma  # 5 shapes + null class (CFG)
    clf = NoisyClassifier.from_pretrained(runs["clf"] / "final")
    assert clf.config.num_classes == 5
    with pytest.raises(CheckpointError, match="not a UNet"):  # a classifier is not a UNet
        UNet.from_pretrained(runs["clf"] / "final")
    # the bare UNet is registered too
    dm.unet.save_pretrained(tmp_path / "u.safetensors")
    back = load_pretrained(tmp_path / "u.safetensors")
    assert isinstance(back, UNet) and back.config == dm.unet.config
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 17]), torch.tensor([0, 4])
    with torch.no_grad():
        assert torch.equal(back.eval()(x, t, y), dm.unet.eval()(x, t, y))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_sample_with_classifier_guidance_through_cli(runs, tmp_path, sampler):
    ck, clf = str(runs["adm"] / "final"), str(runs["clf"] / "final")
    common = ["sample", "--checkpoint", ck, "--sampler", sampler, "--steps", "4", "-n", "3", "--seed", "5",
              "--label", "star"]
    guided = ["--guidance", "classifier", "--classifier", clf, "--scale", "20"]
    assert main([*common, *guided, "--out", str(tmp_path / "a.png"), "--metrics", str(tmp_path / "m.json")]) == 0
    assert main([*common, *guided, "--out", str(tmp_path / "b.png")]) == 0
    assert main([*common, "--guidance", "none", "--out", str(tmp_path / "c.png")]) == 0
    a, b, c = _png(tmp_path / "a.png"), _png(tmp_path / "b.png"), _png(tmp_path / "c.png")
    assert a.shape == (2 * (2 * 33 + 1), 2 * (2 * 33 + 1), 3)  # 3 images -> 2x2 grid of 32px + gaps, x2
    assert np.array_equal(a, b)  # per-sample seeds: the same command gives the same grid
    assert not np.array_equal(a, c)  # the classifier's gradient changed the samples
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["guidance"] == "classifier" and rec["label_kind"] == "shape" and 0 <= rec["recognition_rate"] <= 1
    from dalle2_fast.data.images import read_metadata

    meta = read_metadata(tmp_path / "a.png")  # the grid records how to redraw each image
    assert meta["seeds"] == [5, 6, 7] and meta["label"] == 4 and meta["sampler"] == sampler


def test_cfg_and_ddpm_sampler(runs, tmp_path):
    ck = str(runs["adm"] / "final")
    assert main(["sample", "--checkpoint", ck, "--guidance", "cfg", "--scale", "3", "--steps", "3", "-n", "2",
                 "--out", str(tmp_path / "cfg.png")]) == 0
    assert main(["sample", "--checkpoint", ck, "--sampler", "ddpm", "--steps", "3", "-n", "2", "--label", "1",
                 "--out", str(tmp_path / "ddpm.png")]) == 0
    assert (tmp_path / "cfg.png").exists() and (tmp_path / "ddpm.png").exists()


def test_resume_is_exact(runs):
    root = runs["root"]
    straight = _train("adm", root / "straight", steps=4, extra=["--ckpt-every", "2"])
    part = _train("adm", root / "part", steps=2)
    _train("adm", part, steps=4, extra=["--resume"])
    # adm keeps an EMA of the weights by default: final/ is the EMA, final_raw/ the raw weights;
    # both continue exactly (the EMA and its update count are in the training checkpoint)
    assert (part / "checkpoints" / "step_00000002" / "ema.safetensors").exists()
    for final in ("final", "final_raw"):
        a, b = load_pretrained(straight / final), load_pretrained(part / final)
        for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(v, w), (final, k)
    assert (straight / "loss.csv").read_text() == (part / "loss.csv").read_text()


def test_fixed_variance_unconditional_ddpm_and_errors(runs, tmp_path):
    # cosine: at T = 20 the linear schedule's last beta is 1 (abar_T = 0, x0 from eps undefined there)
    out = _train("ddpm", tmp_path / "ddpm", steps=2, extra=["--set", "schedule=cosine"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["var_type"] == "fixed_small" and m["label_kind"] == "none" and np.isfinite(m["heldout_bpd"])
    dm = load_pretrained(out / "final")
    assert not dm.config.unet.learn_sigma and dm.config.unet.num_classes is None
    with pytest.raises(ValueError, match="p_uncond"):  # CFG needs a null label
        main(["sample", "--checkpoint", str(out / "final"), "--guidance", "cfg", "-n", "2", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="--classifier"):
        main(["sample", "--checkpoint", str(out / "final"), "--guidance", "classifier", "-n", "2", "--out", str(tmp_path / "x.png")])
    # classifier guidance of the unconditional model: labels go to the classifier only
    assert main(["sample", "--checkpoint", str(out / "final"), "--guidance", "classifier", "--classifier", str(runs["clf"] / "final"),
                 "--label", "square", "--steps", "3", "-n", "2", "--out", str(tmp_path / "u.png")]) == 0
    with pytest.raises(ValueError, match="unknown field"):
        main(["train", "ddpm", "--steps", "1", "--out", str(tmp_path / "bad"), "--set", "no_such=1"])


def test_labels_and_overrides():
    ids = torch.tensor([0, 7, 29])  # class id = shape * 6 + colour
    assert labels_from_class_ids("shape", ids).tolist() == [0, 1, 4]
    assert labels_from_class_ids("colour", ids).tolist() == [0, 1, 5]
    assert parse_class_label("star", label_names("shape"), 5) == 4
    assert parse_class_label("Blue", label_names("colour"), 6) == 4
    assert parse_class_label("red  circle", label_names("class"), 30) == 0
    with pytest.raises(ValueError, match="--label: expected one of"):
        parse_class_label("red", label_names("shape"), 5)
    with pytest.raises(ValueError, match="0..4"):
        parse_class_label("9", label_names("shape"), 5)
    assert parse_field("channel_mult", tuple[float, ...], "1,2,2") == (1.0, 2.0, 2.0)
    assert parse_field("num_head_channels", int | None, "none") is None
    assert parse_field("num_head_channels", int | None, "32") == 32
