"""Fuzzing what config files hold: config.json of a checkpoint (wrong types, negative / NaN /
huge values, missing and unknown keys, format_version strings, random mutations of a nested
config), and the cases of the adversarial pass turned into tests. Each load either succeeds
(a harmless mutation) or raises CheckpointError with a one-line message naming config.json —
never a torch error from a model constructor, never another exception type."""
import copy
import dataclasses
import json
import random

import pytest
import torch

from safetensors.torch import save_file

from dalle2_fast.checkpoint import CheckpointError, load_pretrained, register_model
from dalle2_fast.diffusion.gaussian import DiffusionConfig
from dalle2_fast.models import AEConfig, AutoEncoder, VAE, VAEConfig
from dalle2_fast.models.diffusion_model import DiffusionModel, DiffusionModelConfig
from dalle2_fast.models.unet import UNetConfig


def _tiny_diffusion():
    unet = UNetConfig(image_size=8, in_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=2, num_groups=4)
    return DiffusionModel(DiffusionModelConfig(unet=unet, diffusion=DiffusionConfig(num_timesteps=10)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    torch.manual_seed(0)
    AutoEncoder(AEConfig(resolution=8, channels=4, latent_channels=2, n_res=1)).save_pretrained(root / "ae")
    VAE(VAEConfig(resolution=8, channels=4, latent_channels=2, n_res=1, z_dim=4)).save_pretrained(root / "vae")
    _tiny_diffusion().save_pretrained(root / "dm")
    return root


def _with_config(saved, tmp_path, name, record, src=None):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes((saved / (src or name) / "model.safetensors").read_bytes())
    (d / "config.json").write_text(record if isinstance(record, str) else json.dumps(record))
    return d


def _record(saved, name):
    return json.loads((saved / name / "config.json").read_text())


def refused(d, match=None):
    with pytest.raises(CheckpointError) as info:
        load_pretrained(d)
    msg = str(info.value)
    assert type(info.value) is CheckpointError and "\n" not in msg, msg
    assert str(d) in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


@pytest.mark.parametrize("key, value, says", [
    ("channels", -4, "config.channels: expected int in [1, 16777216] (a size), got int -4"),  # issue: negative dim
    ("channels", 0, "config.channels: expected int in [1"),
    ("channels", 2**40, "config.channels: expected int in [1"),
    ("channels", 4.0, "config.channels: expected int, got float 4.0"),
    ("channels", "4", "config.channels: expected int, got str '4'"),
    ("channels", True, "config.channels: expected int, got bool True"),
    ("channels", None, "config.channels: expected int, got null"),
    ("channels", [4], "config.channels: expected int, got list"),
    ("n_res", -1, "config.n_res: expected int in [0,"),
    ("z_dim", 10**30, "config.z_dim: expected int in [0,"),
    ("chanels", 4, "unknown config keys ['chanels']"),
    ("channels", 5, "mis-shaped tensors"),  # valid type and range, but not these weights
])
def test_config_field_mutations(saved, tmp_path, key, value, says):
    rec = _record(saved, "ae")
    rec["config"][key] = value
    msg = refused(_with_config(saved, tmp_path, "ae", rec), says)
    assert "config.json" in msg or "model.safetensors" in msg


@pytest.mark.parametrize("text, says", [
    ('{"model_type": "vae", "format_version": 1, "config": {"beta": NaN}}',
     "config.beta: expected a finite float, got float nan"),  # the NaN beta
    ('{"model_type": "vae", "format_version": 1, "config": {"beta": Infinity}}',
     "config.beta: expected a finite float"),
    ('{"model_type": "vae", "format_version": 1, "config": {"beta": 1e400}}',
     "config.beta: expected a finite float"),
])
def test_non_finite_floats(saved, tmp_path, text, says):
    refused(_with_config(saved, tmp_path, "vae", text), says)


@pytest.mark.parametrize("mutate, says", [
    (lambda r: r.update(format_version="1"), "format_version: expected int >= 0, got str '1'"),
    (lambda r: r.update(format_version=1.0), "format_version: expected int >= 0, got float"),
    (lambda r: r.update(format_version=True), "format_version: expected int >= 0, got bool"),
    (lambda r: r.update(format_version=-1), "format_version: expected int >= 0"),
    (lambda r: r.update(format_version=99), "format_version 99 is newer"),
    (lambda r: r.update(model_type=7), "model_type: expected str, got int 7"),
    (lambda r: r.update(model_type="nope"), "unknown model_type 'nope'"),
    (lambda r: r.update(model_type="vae"), "does not match VAE"),  # another model's weights
    (lambda r: r.update(config=[1]), "config: expected an object, got list"),
    (lambda r: r.pop("config"), "missing key 'config'"),
    (lambda r: r.update(extra=1), "unknown keys ['extra']"),
])
def test_record_mutations(saved, tmp_path, mutate, says):
    rec = _record(saved, "ae")
    mutate(rec)
    refused(_with_config(saved, tmp_path, "ae", rec), says)


@pytest.mark.parametrize("text, says", [
    ("", "empty file"), ("[1, 2]", "expected a JSON object, got list"), ('{"model_type": "ae"', "not valid JSON"),
    ("\x00\x01binary", "not a JSON object"), ('{"a": 1, "a": 2}', "duplicate key"),
    ("[" * 50_000 + "]" * 50_000, "JSON"),
])
def test_config_file_garbage(saved, tmp_path, text, says):
    refused(_with_config(saved, tmp_path, "ae", text), says)


def test_nested_config_messages_name_the_path(saved, tmp_path):
    rec = _record(saved, "dm")
    rec["config"]["unet"]["channel_mult"] = [1, "2"]
    refused(_with_config(saved, tmp_path, "dm", rec), "config.unet.channel_mult[1]: expected float, got str '2'")
    rec = _record(saved, "dm")
    rec["config"]["unet"]["dropout"] = 1.5
    refused(_with_config(saved, tmp_path, "dm", rec), "config.unet.dropout: expected a float in [0, 1] (a probability)")
    rec = _record(saved, "dm")
    rec["config"]["p_uncond"] = -0.1
    refused(_with_config(saved, tmp_path, "dm", rec), "config.p_uncond: expected a float in [0, 1]")
    rec = _record(saved, "dm")
    rec["config"]["unet"]["num_groups"] = 3  # in range, but the dataclass's own check refuses it
    refused(_with_config(saved, tmp_path, "dm", rec), "config.unet: ValueError: UNetConfig: channels 8")
    rec = _record(saved, "dm")
    rec["config"]["label_kind"] = "bogus"
    refused(_with_config(saved, tmp_path, "dm", rec), "label_kind: expected one of")


@dataclasses.dataclass(frozen=True)
class _ExplodingConfig:
    width: int = 4


@register_model("test_fuzz_exploding")
class _Exploding(torch.nn.Module):
    """A config that passes every rule but whose constructor raises a torch error."""
    config_class = _ExplodingConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.w = torch.nn.Parameter(torch.empty(config.width - 5))  # "negative dimension" for width < 5


def test_constructor_error_becomes_checkpoint_error(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    save_file({}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "test_fuzz_exploding", "format_version": 1,
                                               "config": {"width": 4}}))
    refused(d, "config does not build a _Exploding: RuntimeError")


JUNK = [-1, 0, 1, 3, 2**24 + 1, 2**63, -(2**63), 0.5, -0.5, 1e308, "x", "", None, True, False, [], [1, 2], {},
        {"a": 1}]


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))
    yield prefix


def test_random_mutations_of_a_nested_config(saved, tmp_path):
    """200 random single and double mutations anywhere in the record: loads or CheckpointError."""
    base = _record(saved, "dm")
    paths = [p for p in _paths(base) if p]
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(200):
        rec = copy.deepcopy(base)
        for _ in range(rng.randint(1, 2)):
            path = rng.choice(paths)
            node = rec
            try:
                for k in path[:-1]:
                    node = node[k]
                if rng.random() < 0.1 and isinstance(node, dict):
                    node.pop(path[-1], None)  # a missing key takes its default
                else:
                    node[path[-1]] = rng.choice(JUNK)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation replaced a parent
        d = _with_config(saved, tmp_path, f"m{trial}", rec, src="dm")
        try:
            load_pretrained(d)
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert "\n" not in str(e) and str(d) in str(e), str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes
