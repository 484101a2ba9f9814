"""UNet and NoisyClassifier: shapes for every preset, conditioning paths (labels, embedding
vector, context tokens with padding), channels-last, bf16 autocast, gradient checkpointing,
clear errors on bad input."""
import math

import pytest
import torch

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.models.classifier import ClassifierConfig, NoisyClassifier
from dalle2_fast.models.unet import UNet, UNetConfig
from dalle2_fast.models.unet_configs import CLASSIFIER_PRESETS, UNET_PRESETS, classifier_preset, unet_preset
from dalle2_fast.nn.embeddings import timestep_embedding


pytestmark = pytest.mark.usefixtures("one_thread")

# A small ADM-style config with every feature on; width 32 keeps each test well under a second.
SMALL = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(16, 8), num_head_channels=16, use_scale_shift_norm=True,
                   resblock_updown=True, learn_sigma=True, num_classes=5)


def _wake(model, seed=0):
    """Randomise the zero-initialised output convs so outputs depend on every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model


def _batch(cfg, b=2, size=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = size or cfg.image_size
    x = torch.randn(b, cfg.in_channels, s, s, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, cfg.num_classes, (b,), generator=g) if cfg.num_classes else None
    return x, t, y


@pytest.mark.parametrize("name", list(UNET_PRESETS))
def test_preset_shapes(name):
    cfg = unet_preset(name, num_classes=3)  # presets are unconditional; labels on top must work
    model = UNet(cfg).eval()
    x, t, y = _batch(cfg, b=1)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (1, 6 if cfg.learn_sigma else 3, cfg.image_size, cfg.image_size)
    assert torch.isfinite(out).all()


def test_classifier_preset_and_gradient():
    cfg = classifier_preset("classifier-32", num_classes=7)
    clf = NoisyClassifier(cfg)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    logits = clf(x, torch.tensor([0, 10, 999]))
    assert logits.shape == (3, 7)
    # classifier guidance needs d log p(y|x_t) / d x_t: it must reach the input
    (g,) = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 2].sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0
    assert set(CLASSIFIER_PRESETS) == {"classifier-32"}


def test_classifier_gradient_step_raises_target_probability():
    """The classifier-guidance direction: a small step of x_t along grad log p(y | x_t, t)
    raises p(y | x_t, t) for every sample (a toy stand-in for the sampler's guided mean shift)."""
    clf = _wake(NoisyClassifier(classifier_preset("classifier-32", model_channels=32, num_classes=5)), seed=3)
    g = torch.Generator().manual_seed(4)
    x, t, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([10, 200, 500, 900]), torch.tensor([0, 1, 2, 4])

    def logp(xx):
        return torch.log_softmax(clf(xx, t), -1)[torch.arange(4), y]

    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(logp(xr).sum(), xr)
    with torch.no_grad():
        before, after = logp(x), logp(x + 0.05 * grad / grad.flatten(1).norm(dim=1)[:, None, None, None])
    assert (after > before).all(), (before, after)


def test_classifier_adaptive_pool():
    cfg = ClassifierConfig(image_size=16, num_classes=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), num_head_channels=None, num_heads=2, pool="adaptive")
    out = _wake(NoisyClassifier(cfg))(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert out.shape == (2, 4) and out.abs().sum() > 0


def test_built_from_the_nn_layers():
    """Every norm of the U-Net and the classifier is an nn.AdaGN and every spatial attention an
    nn.Attention (one module each, shared with the rest of the package); no plain GroupNorm or
    private attention projection is left."""
    from dalle2_fast.nn import AdaGN, Attention
    from dalle2_fast.nn.unet_blocks import AttentionBlock, ResBlock

    for model in (UNet(SMALL.replace(context_dim=8)), NoisyClassifier(classifier_preset("classifier-32"))):
        mods = list(model.modules())
        assert not any(type(m) is torch.nn.GroupNorm for m in mods)
        blocks = [m for m in mods if isinstance(m, AttentionBlock)]
        assert blocks and all(isinstance(b.norm, AdaGN) and isinstance(b.attn, Attention) for b in blocks)
        res = [m for m in mods if isinstance(m, ResBlock)]
        assert res and all(isinstance(r.norm1, AdaGN) and isinstance(r.norm2, AdaGN) for r in res)
        assert isinstance(model.out_norm, AdaGN)


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 1.5, 999.0])
    e = timestep_embedding(t, 7)  # odd dim: a zero column at the end
    assert e.shape == (3, 7) and (e[:, -1] == 0).all()
    f = math.exp(-math.log(10000.0) * 2 / 3)  # third frequency of half=3
    assert torch.allclose(e[:, 2], torch.cos(t * f)) and torch.allclose(e[:, 5], torch.sin(t * f))


def test_conditioning_paths_change_the_output():
    cfg = SMALL.replace(cond_dim=12, context_dim=24)
    model = _wake(UNet(cfg)).eval()
    x, t, y = _batch(cfg)
    cond, ctx = torch.randn(2, 12), torch.randn(2, 5, 24)
    with torch.no_grad():
        base = model(x, t, y, cond, ctx)
        assert base.shape == (2, 6, 16, 16)
        for other in [model(x, t, (y + 1) % 5, cond, ctx), model(x, t, y, cond + 1, ctx),
                      model(x, t, y, cond, ctx + 1), model(x, t + 1, y, cond, ctx)]:
            assert (other - base).abs().max() > 1e-4  # labels, cond, context, timestep all wired
        # context is optional at call time even when the model has context_dim
        assert model(x, t, y, cond).shape == base.shape


def test_context_padding_equals_dropping_tokens():
    """A padded context token must be invisible: masking the last two tokens of sample 0 gives
    exactly what running sample 0 with those tokens removed gives."""
    cfg = SMALL.replace(num_classes=None, context_dim=8)
    model = _wake(UNet(cfg), seed=1).eval()
    x, t, _ = _batch(cfg)
    ctx = torch.randn(2, 6, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True  # sample 0: last two tokens are padding; sample 1: none
    with torch.no_grad():
        masked = model(x, t, context=ctx, context_mask=mask)
        short = model(x[:1], t[:1], context=ctx[:1, :4])
        full = model(x[1:], t[1:], context=ctx[1:])
        unmasked0 = model(x[:1], t[:1], context=ctx[:1])
    torch.testing.assert_close(masked[:1], short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[1:], full, atol=1e-5, rtol=1e-5)
    assert (unmasked0 - short).abs().max() > 1e-4  # the two dropped tokens did matter


def test_cond_tokens_unclip_style():
    """unCLIP: the embedding also becomes ``cond_tokens`` extra context tokens. With the
    time-embedding path zeroed, cond must still steer the output (through the tokens), with or
    without text context, and padded text tokens stay invisible."""
    cfg = SMALL.replace(num_classes=None, cond_dim=6, context_dim=8, cond_tokens=4)
    model = _wake(UNet(cfg), seed=2).eval()
    with torch.no_grad():
        model.cond_proj.weight.zero_()
        model.cond_proj.bias.zero_()
    x, t, _ = _batch(cfg)
    cond, ctx = torch.randn(2, 6), torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 3:] = True
    with torch.no_grad():
        for c in (None, ctx):
            assert (model(x, t, cond=cond, context=c) - model(x, t, cond=cond + 1, context=c)).abs().max() > 1e-4
        torch.testing.assert_close(model(x, t, cond=cond, context=ctx, context_mask=mask),
                                   model(x, t, cond=cond, context=ctx[:, :3]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cond_tokens"):
        SMALL.replace(cond_tokens=4)  # needs cond_dim and context_dim


def test_channels_last_matches():
    model = _wake(UNet(SMALL)).eval()
    x, t, y = _batch(SMALL)
    with torch.no_grad():
        ref = model(x, t, y)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    cfg = SMALL.replace(context_dim=8)
    model = _wake(UNet(cfg)).eval()
    x, t, y = _batch(cfg)
    ctx = torch.randn(2, 3, 8)
    with torch.no_grad():
        ref = model(x, t, y, context=ctx)
        with torch.autocast("cpu", dtype=dtype):
            out = model(x, t, y, context=ctx)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2, err  # bf16 has 8 mantissa bits (fp16 11); a wrong path would be O(1) off


def test_autocast_training_step_has_grads():
    model = _wake(UNet(SMALL))
    x, t, y = _batch(SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t, y).float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_same_grads():
    """Checkpointed blocks recompute in backward; with dropout on, the RNG must replay so
    the gradients are the same as without checkpointing."""
    cfg = SMALL.replace(dropout=0.3, context_dim=8)
    model = _wake(UNet(cfg)).train()
    x, t, y = _batch(cfg)
    ctx = torch.randn(2, 3, 8)

    def grads(ckpt):
        model.set_checkpointing(ckpt)
        model.zero_grad()
        xi, ci = x.clone().requires_grad_(), ctx.clone().requires_grad_()
        torch.manual_seed(123)
        model(xi, t, y, context=ci).pow(2).mean().backward()
        return [xi.grad, ci.grad] + [p.grad.clone() for p in model.parameters()]

    plain, ck = grads(False), grads(True)
    assert UNet(cfg.replace(use_checkpoint=True)).input_blocks[1].use_checkpoint
    for a, b in zip(plain, ck):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_non_square_and_larger_inputs():
    # fully convolutional: any H, W divisible by the total downsampling works
    model = UNet(SMALL).eval()
    x, t, y = _batch(SMALL, size=16)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 24), t, y).shape == (2, 6, 8, 24)


def test_bad_input_errors():
    model = UNet(SMALL)
    x, t, y = _batch(SMALL)
    with pytest.raises(ValueError, match=r"x must be \(B, 3"):
        model(torch.randn(2, 4, 16, 16), t, y)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(2, 3, 15, 16), t, y)
    with pytest.raises(ValueError, match="y must be given"):
        model(x, t)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1], y)
    with pytest.raises(ValueError, match="no context_dim"):
        model(x, t, y, context=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="cond must be given"):
        model(x, t, y, cond=torch.randn(2, 4))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(model_channels=48), "divisible by num_groups"),  # 48 % 32
        (dict(attention_resolutions=(4,)), "feature-map sizes"),  # 16 -> 8 only
        (dict(image_size=17), "divisible by 2"),
        (dict(num_head_channels=24), "num_head_channels"),
        (dict(dropout=1.0), "dropout"),
        (dict(channel_mult=()), "channel_mult"),
    ],
)
def test_bad_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        UNet(SMALL.replace(**changes))


def test_config_typos_are_errors():
    with pytest.raises(TypeError):
        SMALL.replace(num_channel=64)
    with pytest.raises(KeyError, match="known"):
        unet_preset("adm-128")
    with pytest.raises(TypeError, match="UNetConfig"):
        UNet(dict(image_size=32))


def test_save_load_roundtrip_with_config(tmp_path):
    """One safetensors file carries weights and the typed config; loading needs nothing else."""
    cfg = SMALL.replace(context_dim=8, cond_dim=4, channel_mult=(1, 2))
    model = _wake(UNet(cfg)).eval()
    model.save_pretrained(tmp_path / "unet.safetensors")
    back = UNet.from_pretrained(tmp_path / "unet.safetensors").eval()
    assert back.config == cfg
    x, t, y = _batch(cfg)
    args = (x, t, y, torch.randn(2, 4), torch.randn(2, 3, 8))
    with torch.no_grad():
        assert torch.equal(back(*args), model(*args))
    clf = NoisyClassifier(classifier_preset("classifier-32", model_channels=32, num_classes=3))
    clf.save_pretrained(tmp_path / "clf.safetensors")
    assert NoisyClassifier.from_pretrained(tmp_path / "clf.safetensors").config == clf.config
    with pytest.raises(CheckpointError, match="NoisyClassifier"):  # the wrong kind of file
        UNet.from_pretrained(tmp_path / "clf.safetensors")


def test_compile_fullgraph_no_graph_breaks():
    """Dynamo traces the whole U-Net (validation, context concat and padding mask included)
    in one graph, so swapping in the custom ops keeps torch.compile working."""
    cfg = SMALL.replace(context_dim=8)
    model = UNet(cfg).eval()
    x, t, y = _batch(cfg)
    ctx, mask = torch.randn(2, 3, 8), torch.tensor([[False, False, True], [False, False, False]])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y, context=ctx, context_mask=mask),
                                   model(x, t, y, context=ctx, context_mask=mask))


def test_tiny_unet_learns_to_denoise():
    """A few Adam steps of the DDPM epsilon objective (Ho et al. Eq. 14, hand-rolled q_sample
    with a linear beta schedule) on a fixed batch must lower the loss: every layer is
    trainable and the gradients point somewhere useful."""
    torch.manual_seed(0)
    cfg = UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), num_heads=2)
    model = UNet(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    t = torch.randint(0, 1000, (8,))
    eps = torch.randn_like(x0)
    xt = abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * eps
    losses = []
    for _ in range(12):
        loss = (model(xt, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
