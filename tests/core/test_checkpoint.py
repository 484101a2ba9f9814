"""Checkpoint format: safetensors + typed JSON config, atomic writes, clear errors, training
state for exact resume, keep-last-N."""
import json
from dataclasses import dataclass

import pytest
import torch

from dalle2_fast.checkpoint import (CheckpointError, config_from_dict, latest_training_state, load_pretrained,
                                    load_training_state, save_training_state)
from dalle2_fast.models import AEConfig, AutoEncoder, VQVAE, VQVAEConfig


def _model(**kw):
    torch.manual_seed(0)
    return AutoEncoder(AEConfig(resolution=16, channels=8, **kw))


def test_directory_and_single_file_round_trip(tmp_path):
    m = _model().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for p in (tmp_path / "dir", tmp_path / "one.safetensors"):
        m.save_pretrained(p)
        back = load_pretrained(p).eval()  # needs nothing but the path
        assert type(back) is AutoEncoder and back.config == m.config
        assert torch.equal(back.reconstruct(x), m.reconstruct(x))
    rec = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert rec["model_type"] == "ae" and rec["config"]["channels"] == 8
    assert not [p.name for p in (tmp_path / "dir").iterdir() if ".tmp" in p.name]  # no temp files left


def test_wrong_class_missing_unexpected_misshaped(tmp_path):
    _model().save_pretrained(tmp_path / "ae")
    with pytest.raises(CheckpointError, match="not a VQVAE"):
        VQVAE.from_pretrained(tmp_path / "ae")
    # mis-shaped: same keys, other channel count; the message names the tensor and both shapes
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / "ae" / "model.safetensors"))
    k = "encoder.net.0.weight"
    bad = dict(state, **{k: torch.zeros(9, 3, 3, 3)})
    save_file(bad, str(tmp_path / "ae" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"mis-shaped.*encoder\.net\.0\.weight.*\(9, 3, 3, 3\)"):
        load_pretrained(tmp_path / "ae")
    missing = {kk: v for kk, v in state.items() if kk != k}
    save_file(missing, str(tmp_path / "ae" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors.*encoder\.net\.0\.weight"):
        load_pretrained(tmp_path / "ae")
    save_file(dict(state, extra=torch.ones(1)), str(tmp_path / "ae" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*extra"):
        load_pretrained(tmp_path / "ae")


@pytest.mark.parametrize("keep", [7, 100, 0.6])  # cut inside the 8-byte length, the header, the data
def test_truncated_file_is_named(tmp_path, keep):
    _model().save_pretrained(tmp_path / "ae")
    f = tmp_path / "ae" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(tmp_path / "ae")


def test_missing_pieces_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    _model().save_pretrained(tmp_path / "ae")
    (tmp_path / "ae" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_pretrained(tmp_path / "ae")
    (tmp_path / "ae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_pretrained(tmp_path / "ae")
    with pytest.raises(CheckpointError, match="unknown config keys"):
        config_from_dict(AEConfig, {"channels": 8, "chanels": 9})
    with pytest.raises(CheckpointError, match="expected int"):
        config_from_dict(AEConfig, {"channels": "8"})


def test_nested_config_from_dict():
    @dataclass
    class Outer:
        inner: AEConfig
        scale: float = 1.0
    o = config_from_dict(Outer, {"inner": {"channels": 4}, "scale": 2})
    assert o.inner == AEConfig(channels=4) and o.scale == 2.0


def test_training_state_restores_everything_and_keeps_last(tmp_path):
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(resolution=16, channels=8, num_codes=16, code_dim=4))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    for step in range(1, 5):
        m(x).loss.backward()
        opt.step()
        save_training_state(tmp_path, step, m, {"model": opt}, data_position=step * 4, keep_last=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_00000003", "step_00000004"]
    assert latest_training_state(tmp_path).name == "step_00000004"
    rng_after = torch.rand(3)  # what the RNG gives right after the last save
    m2 = VQVAE(VQVAEConfig(resolution=16, channels=8, num_codes=16, code_dim=4))
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
    state = load_training_state(latest_training_state(tmp_path), m2, {"model": opt2})
    assert state["step"] == 4 and state["data_position"] == 16
    assert torch.equal(torch.rand(3), rng_after)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    with pytest.raises(CheckpointError, match="no optimizer state for"):
        load_training_state(latest_training_state(tmp_path), m2, {"other": opt2})


# ----------------------------------------------------------------------------- resume fall-back
def _run_with_checkpoints(root, steps=(1, 2, 3), ema=True):
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(resolution=16, channels=8, num_codes=16, code_dim=4))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    avg = AveragedModel(m) if ema else None
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for step in steps:
        m(x).loss.backward()
        opt.step()
        if avg is not None:
            avg.update_parameters(m)
        save_training_state(root, step, m, {"model": opt}, data_position=step * 2, keep_last=5, ema=avg)


def _fresh(ema=True):
    from torch.optim.swa_utils import AveragedModel

    m = VQVAE(VQVAEConfig(resolution=16, channels=8, num_codes=16, code_dim=4))
    return m, {"model": torch.optim.Adam(m.parameters(), lr=1e-3)}, (AveragedModel(m) if ema else None)


def _gadget_zip(path, marker):
    import builtins

    class Gadget:
        def __reduce__(self):
            return (builtins.open, (str(marker), "w"))

    torch.save({"optimizers": {"model": Gadget()}, "rng": {"torch": torch.get_rng_state()}}, path)


CORRUPTIONS = {  # file in the newest checkpoint -> how it is damaged
    "optim.pt": [lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
                 lambda p: p.write_bytes(p.read_bytes()[:100]),
                 lambda p: p.write_bytes(b"\0" * 64),
                 lambda p: p.write_bytes(b""),
                 lambda p: p.write_bytes(json.dumps({"x": 1}).encode()),
                 lambda p: torch.save({"optimizers": 5, "rng": {}}, p)],
    "model.safetensors": [lambda p: p.write_bytes(p.read_bytes()[:-10]), lambda p: p.write_bytes(b"PK\x03\x04junk")],
    "ema.safetensors": [lambda p: p.write_bytes(p.read_bytes()[:40])],
    "state.json": [lambda p: p.write_text("{"),
                   lambda p: p.write_text('{"step": "3", "data_position": 6, "extra": {}}'),
                   lambda p: p.write_text('{"step": 3, "extra": {}}'),
                   lambda p: p.unlink()],
}


@pytest.mark.parametrize("fname, i", [(f, i) for f, fs in CORRUPTIONS.items() for i in range(len(fs))])
def test_resume_falls_back_to_newest_intact_checkpoint(tmp_path, fname, i):
    from dalle2_fast.checkpoint import CheckpointWarning, load_latest_training_state

    _run_with_checkpoints(tmp_path)
    CORRUPTIONS[fname][i](tmp_path / "checkpoints" / "step_00000003" / fname)
    m, opts, ema = _fresh()
    with pytest.warns(CheckpointWarning, match=r"step_00000003.*(" + fname.replace(".", r"\.") + "|missing)"):
        path, state = load_latest_training_state(tmp_path, m, opts, ema=ema)
    assert path.name == "step_00000002" and state["step"] == 2


def test_resume_refuses_when_nothing_is_intact_and_runs_no_code(tmp_path):
    from dalle2_fast.checkpoint import CheckpointWarning, load_latest_training_state

    _run_with_checkpoints(tmp_path, steps=(1, 2))
    marker = tmp_path / "pwned"
    _gadget_zip(tmp_path / "checkpoints" / "step_00000002" / "optim.pt", marker)
    (tmp_path / "checkpoints" / "step_00000001" / "state.json").write_text("[]")
    m, opts, ema = _fresh()
    with pytest.raises(CheckpointError) as info:
        load_latest_training_state(tmp_path, m, opts, ema=ema)
    msg = str(info.value)
    assert "no intact training checkpoint among 2" in msg and "\n" not in msg
    assert "step_00000002" in msg and "optim.pt" in msg and "step_00000001" in msg and "state.json" in msg
    assert not marker.exists(), "the pickle gadget in optim.pt never ran (weights_only)"
    assert load_latest_training_state(tmp_path / "empty_run", m, opts) is None


def test_resume_checks_ema_even_without_one(tmp_path):
    """"Intact" does not depend on the caller: a rank without an EMA skips the same checkpoints."""
    from dalle2_fast.checkpoint import CheckpointWarning, load_latest_training_state

    _run_with_checkpoints(tmp_path)
    ema_file = tmp_path / "checkpoints" / "step_00000003" / "ema.safetensors"
    ema_file.write_bytes(ema_file.read_bytes()[:30])
    m, opts, _ = _fresh()
    with pytest.warns(CheckpointWarning, match="ema.safetensors"):
        path, _ = load_latest_training_state(tmp_path, m, opts, ema=None)
    assert path.name == "step_00000002"


def test_optim_truncated_at_many_points(tmp_path):
    """Truncating optim.pt anywhere: a CheckpointError naming it, never a zip or pickle error."""
    _run_with_checkpoints(tmp_path, steps=(1,), ema=False)
    f = tmp_path / "checkpoints" / "step_00000001" / "optim.pt"
    data = f.read_bytes()
    for cut in sorted({0, 1, 4, 30, 100, 500} | set(range(0, len(data), max(1, len(data) // 25)))):
        if cut >= len(data):
            continue
        f.write_bytes(data[:cut])
        m, opts, _ = _fresh(ema=False)
        with pytest.raises(CheckpointError, match="optim.pt") as info:
            load_training_state(tmp_path / "checkpoints" / "step_00000001", m, opts)
        assert "\n" not in str(info.value)


def test_resume_refuses_a_caller_mismatch_at_once(tmp_path):
    """No EMA in the checkpoints of a run that keeps one is a mismatch, not damage: no fall-back
    (under DDP only rank 0 has the EMA; falling back there would split the ranks)."""
    from dalle2_fast.checkpoint import CheckpointMismatch, load_latest_training_state

    _run_with_checkpoints(tmp_path, steps=(1, 2), ema=False)
    m, opts, ema = _fresh(ema=True)
    with pytest.raises(CheckpointMismatch, match=r"step_00000002: no EMA weights"):
        load_latest_training_state(tmp_path, m, opts, ema=ema)
    with pytest.raises(CheckpointMismatch, match="no optimizer state for"):
        load_latest_training_state(tmp_path, m, {"other": opts["model"]})
