"""State-dict layout v1 -> v2 of the U-Net family (attention blocks moved onto nn.Attention):
an old-layout model and the converted new one compute the same function; v1 files load through
the checkpoint hooks; the shipped unCLIP decoder and upsamplers load and run."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dalle2_fast
from dalle2_fast.checkpoint import config_from_dict, load_state_strict, read_config
from dalle2_fast.models.classifier import NoisyClassifier
from dalle2_fast.diffusion import DiffusionConfig
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
from dalle2_fast.models.diffusion_model import DiffusionModel, DiffusionModelConfig
from dalle2_fast.models.unet import UNet, UNetConfig, convert_v1_unet_state_dict
from dalle2_fast.models.unet_configs import classifier_preset
from dalle2_fast.models.upsampler import UnCLIPUpsampler
from dalle2_fast.nn.unet_blocks import AttentionBlock, TimestepSequential
from dalle2_fast.ops import attention_ref

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(dalle2_fast.__file__).parent / "weights" / "unclip_shapes"


class _V1AttentionBlock(AttentionBlock):
    """The attention block as it was before the redesign (a frozen copy of its layout and math:
    its own GroupNorm, qkv / context_kv / proj_out Linears, [part][head][c] channel order,
    [context; own] keys with a padding mask). Subclasses AttentionBlock only so that
    TimestepSequential hands it the context."""

    def __init__(self, channels: int, num_heads: int, num_groups: int, context_dim: int | None):
        nn.Module.__init__(self)
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context=None, context_mask=None):  # noqa: D102
        b, c, hh, ww = x.shape
        nh, d = self.num_heads, c // self.num_heads
        tok = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C)
        q, k, v = self.qkv(tok).view(b, -1, 3, nh, d).permute(2, 0, 3, 1, 4)  # each (B, nh, T, d)
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self.context_kv(context).view(b, -1, 2, nh, d).permute(2, 0, 3, 1, 4)  # (B, nh, Tc, d)
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
            if context_mask is not None:
                mask = torch.cat([context_mask.to(torch.bool), torch.zeros(b, hh * ww, dtype=torch.bool)], dim=1)
        a = attention_ref(q, k, v, key_padding_mask=mask)  # (B, nh, T, d)
        out = self.proj_out(a.transpose(1, 2).reshape(b, hh * ww, c))  # (B, T, C)
        return x + out.transpose(1, 2).reshape(b, c, hh, ww)


def _to_v1(model: nn.Module) -> nn.Module:
    """``model`` with every attention block replaced by a (freshly initialised) v1 block."""
    for seq in model.modules():
        if isinstance(seq, TimestepSequential):
            for i, layer in enumerate(seq):
                if isinstance(layer, AttentionBlock):
                    seq[i] = _V1AttentionBlock(layer.attn.dim, layer.num_heads, layer.norm.num_groups,
                                               layer.attn.context_dim)
    return model


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * r if p.dim() == 1 and "norm" in name and name.endswith("weight")
                    else r / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.2 * r)
    return model.eval()


CFG = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(16, 8), num_head_channels=16, use_scale_shift_norm=True,
                 resblock_updown=True, learn_sigma=True, cond_dim=6, context_dim=8, cond_tokens=2)


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 5, dtype=torch.bool)
    mask[0, 3:] = True
    return dict(x=torch.randn(b, 3, 16, 16, generator=g), t=torch.tensor([7, 640])[:b],
                cond=torch.randn(b, 6, generator=g), context=torch.randn(b, 5, 8, generator=g), context_mask=mask)


def test_v1_model_and_converted_v2_model_agree():
    old = _randomize(_to_v1(UNet(CFG)), seed=1)
    sd = old.state_dict()
    assert any(k.endswith(".qkv.weight") for k in sd) and not any(".attn." in k for k in sd)
    converted = convert_v1_unet_state_dict(sd)
    assert set(converted) == set(UNet(CFG).state_dict())
    assert convert_v1_unet_state_dict(converted) == converted  # v2 passes through: idempotent
    new = UNet(CFG).eval()
    new.load_state_dict(converted, strict=True)
    inp = _inputs()
    with torch.no_grad():
        want, got = old(**inp), new(**inp)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(new(**{**inp, "context": None, "context_mask": None}),
                                   old(**{**inp, "context": None, "context_mask": None}), rtol=1e-5, atol=1e-5)
    # a wrong mapping would not pass: swapping the k/v context projections changes the output
    bad = dict(converted)
    k = next(k for k in bad if k.endswith("attn.to_context_kv.weight"))
    bad[k] = bad[k].flip(0)
    new.load_state_dict(bad)
    with torch.no_grad():
        assert not torch.allclose(new(**inp), want, atol=1e-4)


def test_v1_files_load_through_the_checkpoint_hooks(tmp_path):
    old = _randomize(_to_v1(UNet(CFG)), seed=2)
    old.save_pretrained(tmp_path / "v1.safetensors")  # a v1 file: old keys, the same config
    new = UNet.from_pretrained(tmp_path / "v1.safetensors").eval()
    inp = _inputs(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(new(**inp), old(**inp), rtol=1e-5, atol=1e-5)
    # the classifier: its attention blocks convert, its pooling head's own `pool.qkv` does not
    clf_old = _randomize(_to_v1(NoisyClassifier(classifier_preset("classifier-32", model_channels=32,
                                                                   num_classes=3))), seed=4)
    assert "pool.qkv.weight" in convert_v1_unet_state_dict(clf_old.state_dict())
    clf_old.save_pretrained(tmp_path / "clf.safetensors")
    clf = NoisyClassifier.from_pretrained(tmp_path / "clf.safetensors").eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(clf(x, t), clf_old(x, t), rtol=1e-5, atol=1e-5)
    # a trained suite model (DiffusionModel: U-Net under `unet.`) written before the change
    ucfg = CFG.replace(cond_dim=None, context_dim=None, cond_tokens=0, num_classes=4)
    dcfg = DiffusionConfig(var_type="learned_range", loss="hybrid")
    dm_old = DiffusionModel(DiffusionModelConfig(unet=ucfg, diffusion=dcfg, num_classes=3, p_uncond=0.1))
    _randomize(_to_v1(dm_old.unet), seed=6)
    dm_old.save_pretrained(tmp_path / "dm.safetensors")
    dm = DiffusionModel.from_pretrained(tmp_path / "dm.safetensors").eval()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    with torch.no_grad():
        torch.testing.assert_close(dm(x, t, y), dm_old.eval()(x, t, y), rtol=1e-5, atol=1e-5)


def test_prefix_limits_the_conversion():
    sd = {"unet.middle_block.1.qkv.weight": torch.zeros(1), "text_proj.1.weight": torch.zeros(1),
          "other.input_blocks.1.1.proj_out.bias": torch.zeros(1)}
    out = convert_v1_unet_state_dict(sd, prefix="unet.")
    assert set(out) == {"unet.middle_block.1.attn.to_qkv.weight", "text_proj.1.weight",
                        "other.input_blocks.1.1.proj_out.bias"}
    with pytest.raises(KeyError, match="both the old and the new layout"):
        convert_v1_unet_state_dict({**sd, "unet.middle_block.1.attn.to_qkv.weight": torch.zeros(1)}, "unet.")


@pytest.mark.skipif(not (SHIPPED / "decoder.safetensors").exists(), reason="this build ships no unCLIP weights")
def test_shipped_decoder_matches_its_v1_layout(tmp_path):
    """The shipped decoder (trained in the v1 layout, converted once): renamed back to v1 keys it
    loads through UnCLIPDecoder.from_pretrained's hook, and both give what the v1-layout decoder
    holding the same tensors computes."""
    from safetensors.torch import load_file, save_file

    path = SHIPPED / "decoder.safetensors"
    new = UnCLIPDecoder.from_pretrained(path).eval()
    old = UnCLIPDecoder(config_from_dict(DecoderConfig, read_config(path)["config"]))
    _to_v1(old.unet)
    renames = {".attn.to_qkv.": ".qkv.", ".attn.to_context_kv.": ".context_kv.", ".attn.to_out.": ".proj_out."}
    v1_state = {}
    for k, v in load_file(str(path)).items():
        for a, b in renames.items():
            k = k.replace(a, b)
        v1_state[k] = v
    load_state_strict(old, v1_state, str(path))  # the frozen v1 layout holds the renamed tensors
    old.eval()
    v1_file = tmp_path / "decoder_v1.safetensors"
    save_file({k: t.contiguous() for k, t in v1_state.items()}, str(v1_file),
              metadata={"dalle2_fast": json.dumps(read_config(path))})
    via_hook = UnCLIPDecoder.from_pretrained(v1_file).eval()
    c, g = new.config, torch.Generator().manual_seed(5)
    b, s = 3, c.unet.image_size
    mask = torch.ones(b, c.text_len, dtype=torch.bool)
    mask[:, 9:] = False
    args = (torch.randn(b, 3, s, s, generator=g), torch.tensor([0, 500, 999]),
            torch.nn.functional.normalize(torch.randn(b, c.clip_dim, generator=g), dim=-1),
            torch.randn(b, c.text_len, c.text_width, generator=g), mask)
    with torch.no_grad():
        out = new(*args)
        assert out.shape == (b, 6, s, s) and torch.isfinite(out).all()
        torch.testing.assert_close(out, old(*args), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(via_hook(*args), out, rtol=0, atol=0)


@pytest.mark.skipif(not (SHIPPED / "upsampler1.safetensors").exists(), reason="this build ships no unCLIP weights")
@pytest.mark.parametrize("name", ["upsampler1", "upsampler2"])
def test_shipped_upsamplers_load_and_run(name):
    up = UnCLIPUpsampler.from_pretrained(SHIPPED / f"{name}.safetensors").eval()
    c = up.config
    low = torch.rand(1, 3, c.low_res // 2, c.low_res // 2) * 2 - 1  # fully convolutional: a smaller crop
    x = torch.randn(1, 3, low.shape[-1] * up.factor, low.shape[-1] * up.factor)
    with torch.no_grad():
        out = up(x, torch.tensor([100]), low)
    assert out.shape == x.shape and torch.isfinite(out).all()
