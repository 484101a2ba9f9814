"""dalle2_fast.files: format sniffing by magic bytes, the generic config rules, and the unCLIP
pipeline manifest reader (unclip.json: required stages, paths inside the directory, defaults)."""
import json
import pickle
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file

from dalle2_fast.files import (PIPELINE_DEFAULTS, CheckpointError, build_config, config_from_dict, read_json_object,
                               read_pipeline_manifest, sniff)


def test_sniff_names_every_kind(tmp_path):
    f = tmp_path / "f"
    cases = {
        "empty": lambda: f.write_bytes(b""),
        "json": lambda: f.write_text(' \n{"a": 1}'),
        "pickle": lambda: f.write_bytes(pickle.dumps([1, 2], protocol=2)),
        "torch-zip": lambda: torch.save({"a": torch.ones(1)}, f),
        "torchscript": lambda: torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)), str(f)),
        "safetensors": lambda: save_file({"a": torch.ones(2)}, str(f)),
        "safetensors-truncated": lambda: f.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":"),
        "zip": lambda: __import__("zipfile").ZipFile(f, "w").writestr("x.txt", "hi"),
        "unknown": lambda: f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20),
    }
    for kind, make in cases.items():
        f.unlink(missing_ok=True)
        make()
        assert sniff(f) == kind, kind
    with pytest.raises(CheckpointError, match="does not exist"):
        sniff(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is a directory"):
        sniff(tmp_path)


def test_json_object_reader_bounds_and_names(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"a": [1, 2]}')
    assert read_json_object(f) == {"a": [1, 2]}
    f.write_text('{"a": 1}' + " " * 100)
    with pytest.raises(CheckpointError, match="too large"):
        read_json_object(f, max_bytes=50)
    torch.save({}, f)
    with pytest.raises(CheckpointError, match=r"PyTorch zip archive \(torch.save\), not a JSON object"):
        read_json_object(f)


@dataclass(frozen=True)
class Inner:
    heads: int = 2
    dropout: float = 0.0


@dataclass(frozen=True)
class Outer:
    inner: Inner
    width: int = 8
    depth: int = 0
    mult: tuple[float, ...] = (1.0,)
    pair: tuple[int, int] = (1, 2)
    cond_dim: int | None = None
    name: str = "x"
    flag: bool = False


@pytest.mark.parametrize("d, says", [
    ({}, "config: missing required keys ['inner']"),
    ({"inner": {}, "wdth": 3}, "config: unknown config keys ['wdth']; known: ["),
    ({"inner": 3}, "config.inner: expected an object (Inner), got int 3"),
    ({"inner": {"heads": 0}}, "config.inner.heads: expected int in [1, 16777216] (a size), got int 0"),
    ({"inner": {"dropout": 2}}, "config.inner.dropout: expected a float in [0, 1] (a probability), got float 2.0"),
    ({"inner": {}, "width": -1}, "config.width: expected int in [1"),
    ({"inner": {}, "depth": -1}, "config.depth: expected int in [0, 16777216], got int -1"),
    ({"inner": {}, "mult": [1, float("nan")]}, "config.mult[1]: expected a finite float, got float nan"),
    ({"inner": {}, "mult": 2}, "config.mult: expected a list, got int 2"),
    ({"inner": {}, "pair": [1]}, "config.pair: expected a list of 2 values"),
    ({"inner": {}, "cond_dim": 0}, "config.cond_dim: expected int in [1"),
    ({"inner": {}, "name": 3}, "config.name: expected str, got int 3"),
    ({"inner": {}, "flag": 1}, "config.flag: expected bool (true or false), got int 1"),
])
def test_generic_config_rules(d, says):
    """Messages: ``file: field.path: expected ..., got ...`` (as load_pretrained reports them)."""
    with pytest.raises(CheckpointError) as info:
        build_config(Outer, d, "f.json", "config")
    assert str(info.value).startswith(f"f.json: {says}"), str(info.value)


def test_generic_config_rules_accept_and_convert():
    o = config_from_dict(Outer, {"inner": {"heads": 3, "dropout": 1}, "mult": [1, 2.5], "pair": [3, 4],
                                 "cond_dim": None, "flag": True})
    assert o == Outer(Inner(3, 1.0), mult=(1.0, 2.5), pair=(3, 4), cond_dim=None, flag=True)
    assert isinstance(o.inner.dropout, float) and isinstance(o.mult, tuple)


# ----------------------------------------------------------------------------- unclip.json
@pytest.fixture
def pipe_dir(tmp_path):
    d = tmp_path / "pipe"
    (d / "clip").mkdir(parents=True)
    for name in ("prior.safetensors", "decoder.safetensors", "up1.safetensors"):
        (d / name).write_bytes(b"x")
    return d


def _manifest(d, **kw):
    meta = {"clip": "clip", "prior": "prior.safetensors", "decoder": "decoder.safetensors",
            "upsamplers": ["up1.safetensors"], "defaults": {"prior_steps": 4, "decoder_guidance": 3.0}}
    meta.update(kw)
    meta = {k: v for k, v in meta.items() if v is not ...}
    (d / "unclip.json").write_text(json.dumps(meta))


def test_manifest_valid_and_shipped(pipe_dir):
    _manifest(pipe_dir)
    m = read_pipeline_manifest(pipe_dir)
    assert m["prior"] == "prior.safetensors" and m["upsamplers"] == ["up1.safetensors"]
    assert m["defaults"] == {"prior_steps": 4, "decoder_guidance": 3.0}
    from dalle2_fast.pipeline import shipped_weights_dir

    shipped = shipped_weights_dir()
    if shipped is not None:  # the weights shipped in the package pass
        assert set(read_pipeline_manifest(shipped)["defaults"]) <= set(PIPELINE_DEFAULTS)


@pytest.mark.parametrize("kw, says", [
    (dict(prior=...), "missing stage 'prior'"),  # the KeyError: 'prior'
    (dict(decoder=5), "decoder: expected a non-empty relative path, got int 5"),
    (dict(decoder=""), "decoder: expected a non-empty relative path"),
    (dict(prior="/etc/passwd"), "prior: expected a path inside the pipeline directory, got '/etc/passwd'"),
    (dict(prior="../prior.safetensors"), "prior: expected a path inside the pipeline directory"),
    (dict(prior="missing.safetensors"), "prior: 'missing.safetensors' does not exist"),
    (dict(upsamplers="up1.safetensors"), "upsamplers: expected a list of relative paths"),
    (dict(upsamplers=["up1.safetensors", None]), "upsamplers[1]: expected a non-empty relative path"),
    (dict(defaults=[1]), "defaults: expected an object"),
    (dict(defaults={"prior_step": 3}), "defaults.prior_step: unknown key"),
    (dict(defaults={"prior_steps": 0}), "defaults.prior_steps: expected an int in [1, 10000], got int 0"),
    (dict(defaults={"prior_steps": 4.0}), "defaults.prior_steps: expected an int"),
    (dict(defaults={"decoder_guidance": float("nan")}), "defaults.decoder_guidance: expected a finite number"),
    (dict(defaults={"decoder_guidance": True}), "defaults.decoder_guidance: expected a finite number"),
    (dict(extra=1), "unknown keys ['extra']"),
])
def test_manifest_refusals(pipe_dir, kw, says):
    _manifest(pipe_dir, **kw)
    with pytest.raises(CheckpointError) as info:
        read_pipeline_manifest(pipe_dir)
    msg = str(info.value)
    assert says in msg and str(pipe_dir / "unclip.json") in msg and "\n" not in msg, msg


def test_manifest_symlink_escape_and_missing_file(pipe_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    (pipe_dir / "link.safetensors").symlink_to(outside)
    _manifest(pipe_dir, decoder="link.safetensors")
    with pytest.raises(CheckpointError, match="leads outside the pipeline directory"):
        read_pipeline_manifest(pipe_dir)
    (pipe_dir / "unclip.json").unlink()
    with pytest.raises(CheckpointError, match="unclip.json: missing"):
        read_pipeline_manifest(pipe_dir)
    with pytest.raises(CheckpointError, match="not a pipeline directory"):
        read_pipeline_manifest(tmp_path / "nope")
