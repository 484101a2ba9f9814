"""OpenAI checkpoint compatibility: our UNet / NoisyClassifier loaded from guided-diffusion
(PyPI ``guided-diffusion-sdk``, the reference implementation) give the same outputs to 1e-5,
export back to its layout exactly, and refuse mismatched flags and unsafe pickles."""
import pickle

import pytest
import torch

gd = pytest.importorskip("guided_diffusion.script_util")

from dalle2_fast.models.classifier import NoisyClassifier  # noqa: E402
from dalle2_fast.models.unet import UNet, UNetConfig  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # guided_diffusion's cuda.amp decorators
    pytest.mark.usefixtures("one_thread"),
]


def _randomize(model, seed):
    """Every weight random (the zero-initialised output convs too), norm gains near 1, so the
    comparison sees every parameter; scaled by 1/sqrt(fan_in) to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() == 1:  # only GroupNorm gains are 1-D weights; biases are 1-D too
                p.copy_(1 + 0.2 * r if name.endswith("weight") else 0.2 * r)
            else:
                p.copy_(r / max(1, p[0].numel()) ** 0.5)
    return model.eval()


def _close(a, b, tol=1e-5):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, a.abs().max().item()), f"max abs err {err} vs output scale {a.abs().max()}"


# Published flag sets (MODEL_FLAGS of the guided-diffusion README) at reduced width, each with
# what it catches. Inputs run at 32x32 (the nets are fully convolutional) to stay fast.
GUIDED = {
    # ImageNet-64: new attention order, head channels, 3 res blocks, class labels, learned sigma
    # (use_fp16 is a runtime cast in their scripts: accepted, weights load into float32)
    "adm64": dict(attention_resolutions="32,16,8", class_cond=True, dropout=0.1, image_size=64, learn_sigma=True,
                  num_channels=64, num_head_channels=64, num_res_blocks=3, resblock_updown=True,
                  use_new_attention_order=True, use_scale_shift_norm=True, use_fp16=True, diffusion_steps=1000,
                  noise_schedule="cosine"),
    # ImageNet-128: heads by COUNT with the legacy qkv order (the row permutation), channel_mult 1,1,2,3,4
    "adm128": dict(attention_resolutions="32,16,8", class_cond=True, image_size=128, learn_sigma=True,
                   num_channels=64, num_heads=4, num_res_blocks=2, resblock_updown=True, use_scale_shift_norm=True),
    # ImageNet-256 unconditional: no label_emb, 6 levels, legacy order with head channels
    "adm256u": dict(attention_resolutions="32,16,8", class_cond=False, image_size=256, learn_sigma=True,
                    num_channels=32, num_head_channels=64, num_res_blocks=2, resblock_updown=True,
                    use_scale_shift_norm=True),
    # ImageNet-512: the fractional channel_mult 0.5 at the first level, 7 levels
    "adm512": dict(attention_resolutions="32,16,8", class_cond=True, image_size=512, learn_sigma=True,
                   num_channels=64, num_head_channels=64, num_res_blocks=1, resblock_updown=True,
                   use_scale_shift_norm=True),
    # DDPM-style: additive time embedding (no AdaGN), conv up/down, fixed sigma, custom channel_mult,
    # different head counts up and down (num_heads_upsample)
    "ddpm": dict(attention_resolutions="16", image_size=32, channel_mult="1,2,2", num_channels=32,
                 num_heads=2, num_heads_upsample=1, num_res_blocks=2, use_scale_shift_norm=False),
}


def _guided(flags, seed):
    """guided-diffusion's create_model with its defaults overridden by the model flags."""
    keys = set(gd.model_and_diffusion_defaults()) - set(gd.diffusion_defaults()) - {"use_fp16"} | {"learn_sigma"}
    defaults = {k: v for k, v in gd.model_and_diffusion_defaults().items() if k in keys}
    return _randomize(gd.create_model(**{**defaults, **{k: v for k, v in flags.items() if k in keys}}), seed)


def _inputs(model_flags, b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.tensor([3.0, 917.0])[:b]
    y = torch.randint(0, 1000, (b,), generator=g) if model_flags.get("class_cond") else None
    return x, t, y


@pytest.mark.parametrize("name", list(GUIDED))
def test_guided_unet_matches_reference(name):
    flags = GUIDED[name]
    ref = _guided(flags, seed=1)
    ours = UNet.from_guided_diffusion(ref.state_dict(), **flags).eval()
    levels = len(ours.config.channel_mult)
    x, t, y = _inputs(flags, size=max(32, 2 ** (levels - 1)))  # down to 1x1 at the bottom at least
    with torch.no_grad():
        _close(ref(x, t, y), ours(x, t, y))
    # export -> the very tensors we loaded (keys, layout, values)
    new_order = flags.get("use_new_attention_order", False)
    exported = ours.to_guided_diffusion_state_dict(use_new_attention_order=new_order)
    sd = ref.state_dict()
    assert exported.keys() == sd.keys()
    for k in sd:
        assert torch.equal(exported[k], sd[k]), k


def test_export_import_roundtrip_from_our_side():
    """Our own (randomised) model -> guided-diffusion layout -> the reference model gives our
    output; and importing that export reproduces our weights exactly."""
    flags = GUIDED["ddpm"]  # heads by count, legacy order: the qkv permutation both ways
    ref = _guided(flags, seed=2)
    ours = _randomize(UNet.from_guided_diffusion(ref.state_dict(), **flags), seed=3)
    exported = ours.to_guided_diffusion_state_dict()
    ref.load_state_dict(exported, strict=True)
    x, t, y = _inputs(flags, seed=4)
    with torch.no_grad():
        _close(ref(x, t, y), ours(x, t, y))
    back = UNet.from_guided_diffusion(exported, **flags)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_improved_diffusion_flags():
    """improved-diffusion's U-Net is guided-diffusion's with no resblock_updown, the legacy
    attention order and heads by count; its 32x32 default channel_mult is (1, 2, 2, 2).
    Built here through guided-diffusion with exactly those settings (improved-diffusion is
    not on PyPI); loaded through our improved-diffusion entry point with ITS flag names."""
    iflags = dict(image_size=32, num_channels=64, num_res_blocks=3, learn_sigma=True, dropout=0.3,
                  num_heads=4, attention_resolutions="16,8", class_cond=True, diffusion_steps=4000,
                  noise_schedule="cosine")
    ref = _guided(dict(iflags, channel_mult="1,2,2,2", resblock_updown=False, use_new_attention_order=False), 5)
    ours = UNet.from_improved_diffusion(ref.state_dict(), **iflags).eval()
    assert ours.config.channel_mult == (1, 2, 2, 2) and ours.config.final_out_channels == 6
    x, t, y = _inputs(iflags, seed=6)
    with torch.no_grad():
        _close(ref(x, t, y), ours(x, t, y))
    with pytest.raises(TypeError, match="resblock_updown"):  # not an improved-diffusion flag
        UNet.from_improved_diffusion(ref.state_dict(), resblock_updown=True, **iflags)


CLASSIFIER = {
    # the released classifier flags (64x64: depth 4 there) at width 64, attention pooling
    "attention": dict(image_size=64, classifier_attention_resolutions="32,16,8", classifier_depth=2,
                      classifier_width=64, classifier_pool="attention", classifier_resblock_updown=True,
                      classifier_use_scale_shift_norm=True),
    # global-average pooling head, conv downsampling, additive embedding
    "adaptive": dict(image_size=64, classifier_attention_resolutions="16,8", classifier_depth=1,
                     classifier_width=64, classifier_pool="adaptive", classifier_resblock_updown=False,
                     classifier_use_scale_shift_norm=False),
}


@pytest.mark.parametrize("name", list(CLASSIFIER))
def test_classifier_matches_reference(name):
    flags = CLASSIFIER[name]
    ref = _randomize(gd.create_classifier(**{**gd.classifier_defaults(), **flags}), seed=7)
    ours = NoisyClassifier.from_guided_diffusion(ref.state_dict(), **flags).eval()
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([0.0, 999.0])
    with torch.no_grad():
        _close(ref(x, t), ours(x, t))
    exported = ours.to_guided_diffusion_state_dict()
    sd = ref.state_dict()
    assert exported.keys() == sd.keys()
    assert all(torch.equal(exported[k], sd[k]) for k in sd)


def test_load_from_pt_file_weights_only(tmp_path):
    flags = GUIDED["ddpm"]
    ref = _guided(flags, seed=9)
    path = tmp_path / "model.pt"
    torch.save(ref.state_dict(), path)
    ours = UNet.from_guided_diffusion(path, **flags).eval()
    x, t, y = _inputs(flags)
    with torch.no_grad():
        _close(ref(x, t, y), ours(x, t, y))
    # a pickle that would run code on load is refused (weights_only=True), never executed
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Boom(), fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        UNet.from_guided_diffusion(evil, **flags)


def test_export_refuses_what_guided_diffusion_lacks():
    for extra in (dict(cond_dim=4), dict(context_dim=8)):
        model = UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_resolutions=(8,), **extra))
        with pytest.raises(ValueError, match="cannot be exported"):
            model.to_guided_diffusion_state_dict()


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_mismatched_flags_are_clear_errors():
    flags = dict(image_size=32, channel_mult="1,2", num_channels=32, num_res_blocks=1, class_cond=True,
                 attention_resolutions="16", num_head_channels=32, resblock_updown=True)
    sd = _guided(flags, seed=10).state_dict()
    with pytest.raises(ValueError, match="class_cond"):  # checkpoint has label_emb
        UNet.from_guided_diffusion(sd, **{**flags, "class_cond": False})
    with pytest.raises(KeyError, match="missing|unexpected"):  # a different depth
        UNet.from_guided_diffusion(sd, **{**flags, "num_res_blocks": 2})
    with pytest.raises(KeyError, match="missing|unexpected"):  # conv resampling instead of ResBlocks
        UNet.from_guided_diffusion(sd, **{**flags, "resblock_updown": False})
    with pytest.raises(ValueError, match="shape"):  # a different width
        UNet.from_guided_diffusion(sd, **{**flags, "num_channels": 64})
    with pytest.raises(TypeError, match="unknown flags.*num_chanels"):  # a typo is not swallowed
        UNet.from_guided_diffusion(sd, num_chanels=64, **flags)
    with pytest.raises(ValueError, match="image_size 48"):
        UNet.from_guided_diffusion(sd, **{**flags, "image_size": 48, "channel_mult": ""})


def _close_rel(a, b, what="", tol=2e-5):
    """Relative to the tensor's own scale (gradients here are ~1e-3, an absolute 1e-5 would be
    loose); measured worst case 1.7e-6."""
    err = (a - b).abs().max().item()
    assert err <= tol * a.abs().max().item() + 1e-12, f"{what}: max abs err {err} vs scale {a.abs().max()}"


def test_gradients_match_reference():
    """Training through our model is training through theirs: the input gradient and every
    parameter gradient (mapped into their layout, qkv rows permuted) agree."""
    from dalle2_fast.interop.guided_diffusion import _key_map

    flags = dict(GUIDED["adm128"], channel_mult="1,2,2", image_size=32, num_res_blocks=1)
    ref = _guided(flags, seed=11)
    ours = UNet.from_guided_diffusion(ref.state_dict(), **flags).eval()
    x, t, y = _inputs(flags, size=16, seed=12)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr, t, y).square().mean().backward()
    ours(xo, t, y).square().mean().backward()
    _close_rel(xr.grad, xo.grad)
    theirs = dict(ref.named_parameters())
    for key, (their_key, to_theirs, _) in _key_map(ours, new_order=False).items():
        g = to_theirs(dict(ours.named_parameters())[key].grad)
        _close_rel(theirs[their_key].grad, g, their_key)


def test_super_resolution_model():
    """The released 64->256 upsampler's flags (SuperResModel: large_size / small_size, x and the
    bilinearly upsampled low-res image concatenated) at reduced width; evaluated at 32 from 8."""
    flags = dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, large_size=256,
                 small_size=64, learn_sigma=True, noise_schedule="linear", num_channels=32, num_heads=4,
                 num_res_blocks=1, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True)
    keys = set(gd.sr_model_and_diffusion_defaults()) - set(gd.diffusion_defaults()) | {"learn_sigma"}
    ref = _randomize(gd.sr_create_model(**{k: v for k, v in {**gd.sr_model_and_diffusion_defaults(), **flags,
                                                                  "use_fp16": False}.items() if k in keys}), 13)
    ours = UNet.from_guided_diffusion(ref.state_dict(), **flags).eval()
    assert ours.config.low_res_channels == 3 and ours.config.in_channels == 3
    x, t, y = _inputs(flags, size=32, seed=14)
    low = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _close(ref(x, t, low_res=low, y=y), ours(x, t, y, low_res=low))
    with pytest.raises(ValueError, match="low_res must be given"):
        ours(x, t, y)
