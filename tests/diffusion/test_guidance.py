"""Guidance wrappers: classifier-free (s = 1 is the conditional model; the fused path equals
the wrapper; one batched forward), classifier / CLIP / image guidance move samples toward
their targets, x0 clipping and dynamic thresholding."""
import pytest
import torch

from dalle2_fast.diffusion import (ClassifierFreeGuidance, ClassifierGuidance, CLIPGuidance, GaussianDiffusion,
                                   ImageGuidance, clip_x0, cosine_betas, ddim_sample, ddpm_sample, gram_matrix,
                                   respace)
from dalle2_fast.ops import dynamic_threshold_values
from tests.diffusion.test_samplers import exact_denoiser


def cond_model(base, learned=False):
    """Exact-score denoiser for data N(0.3 + y, 0.25) given the condition y (y = 0: unconditional);
    records the batch of every call."""
    den = exact_denoiser(base, mu=lambda x, y: 0.3 + y)

    def model(x, t, y):
        out = den(x, t, y=y)
        if learned:  # variance channels that depend on the condition
            out = torch.cat([out, torch.tanh(y.reshape(-1, *([1] * (x.dim() - 1))) + 0 * x)], dim=1)
        model.calls.append(x.shape[0])
        return out

    model.calls = []
    return model


def test_cfg_scale_one_is_conditional():
    base = GaussianDiffusion(cosine_betas(100))
    model = cond_model(base)
    x = torch.randn(4, 1, 3, 3)
    t = torch.tensor([10, 50, 70, 99])
    y = torch.tensor([1.0, 1.0, 2.0, 2.0])
    cfg = ClassifierFreeGuidance(model, 1.0, {"y": torch.zeros(1)})
    torch.testing.assert_close(cfg(x, t, y=y), model(x, t, y=y), rtol=0, atol=1e-6)
    proc = respace(base, "20")
    a = ddim_sample(cfg, proc, x, model_kwargs={"y": y})
    b = ddim_sample(model, proc, x, model_kwargs={"y": y})
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("learned", [False, True])
def test_cfg_fused_path_equals_wrapper(learned):
    """The samplers hand the batched (cond; uncond) output to the fused step; the result equals
    sampling with the combined output, and the model runs once per step on 2B rows."""
    kw = dict(var_type="learned_range", loss="hybrid") if learned else {}
    base = GaussianDiffusion(cosine_betas(100), **kw)
    model = cond_model(base, learned)
    proc = respace(base, "10")
    y = torch.tensor([1.0, 2.0, 1.0])
    cfg = ClassifierFreeGuidance(model, torch.tensor([0.5, 3.0, 7.0]), {"y": torch.zeros(1)})
    fused = ddpm_sample(cfg, proc, (3, 1, 4, 4), seeds=[1, 2, 3], model_kwargs={"y": y}, clip="dynamic")
    assert model.calls == [6] * 10
    plain = ddpm_sample(lambda x, t, **k: cfg(x, t, **k), proc, (3, 1, 4, 4), seeds=[1, 2, 3],
                        model_kwargs={"y": y}, clip="dynamic")
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    out = cfg(torch.randn(3, 1, 2, 2), torch.tensor([5, 5, 5]), y=y)
    if learned:  # the variance channels come from the conditional half
        torch.testing.assert_close(out[:, 1:], torch.tanh(y).reshape(3, 1, 1, 1).expand(3, 1, 2, 2))


def test_cfg_bad_arguments():
    model = cond_model(GaussianDiffusion(cosine_betas(10)))
    with pytest.raises(ValueError, match="null_kwargs has keys"):
        ClassifierFreeGuidance(model, 2.0, {"z": torch.zeros(1)})(torch.zeros(1, 1, 2), torch.tensor([1]),
                                                                  y=torch.ones(1))
    with pytest.raises(ValueError, match="guidance scale"):
        ClassifierFreeGuidance(model, torch.ones(3), {"y": torch.zeros(1)})(torch.zeros(2, 1, 2),
                                                                           torch.tensor([1, 1]), y=torch.ones(2))


def toy_classifier(x, t):
    """Two classes by the sign of (mean(x) - 0.3): class 0 is 'above the data mean'."""
    m = x.reshape(x.shape[0], -1).mean(1) - 0.3
    return torch.stack([4 * m, -4 * m], dim=1)


@pytest.mark.parametrize("sampler,mode", [(ddpm_sample, "mean"), (ddim_sample, "score")])
def test_classifier_guidance_shifts_prediction(sampler, mode):
    base = GaussianDiffusion(cosine_betas(1000))
    proc = respace(base, "50")
    den = exact_denoiser(base)
    y = torch.zeros(400, dtype=torch.long)
    guided = ClassifierGuidance(lambda x, t, y: den(x, t), toy_classifier, proc, scale=3.0, mode=mode)
    plain = sampler(lambda x, t, y: den(x, t), proc, (400, 1, 2, 2), model_kwargs={"y": y}, seeds=range(400))
    moved = sampler(guided, proc, (400, 1, 2, 2), model_kwargs={"y": y}, seeds=range(400))
    p_plain = toy_classifier(plain, None).softmax(1)[:, 0].mean()
    p_moved = toy_classifier(moved, None).softmax(1)[:, 0].mean()
    assert p_plain < 0.6 and p_moved > p_plain + 0.15, (float(p_plain), float(p_moved))
    with pytest.raises(ValueError, match="labels"):
        guided(torch.zeros(1, 1, 2, 2), torch.tensor([proc.timestep_map[3]]))


def test_clip_guidance_raises_similarity():
    base = GaussianDiffusion(cosine_betas(1000))
    proc = respace(base, "25")
    den = exact_denoiser(base)
    pattern = torch.tensor([1.0, -1.0, -1.0, 1.0]).reshape(1, 1, 2, 2)

    def similarity(img):  # a stand-in for CLIP: cosine similarity to a fixed "prompt" pattern
        return torch.nn.functional.cosine_similarity(img.flatten(1), pattern.flatten(1), dim=1)

    for on, through in [("x0", False), ("x0", True), ("xt", False)]:
        sim = similarity if on == "x0" else (lambda img, t: similarity(img))
        g = CLIPGuidance(den, proc, sim, scale=20.0, on=on, through_model=through)
        plain = ddim_sample(den, proc, (200, 1, 2, 2), seeds=range(200))
        moved = ddim_sample(g, proc, (200, 1, 2, 2), seeds=range(200))
        assert similarity(moved).mean() > similarity(plain).mean() + 0.2, on


def test_image_guidance_pulls_toward_reference():
    base = GaussianDiffusion(cosine_betas(1000))
    proc = respace(base, "25")
    den = exact_denoiser(base)
    ref = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).reshape(1, 1, 2, 2).repeat(1, 2, 4, 4)  # (1, 2, 8, 8)
    plain = ddim_sample(den, proc, (64, 2, 8, 8), seeds=range(64))
    pix = ImageGuidance(den, proc, ref, pixel_scale=1.0, style_scale=0.0, scale=100.0)
    near = ddim_sample(pix, proc, (64, 2, 8, 8), seeds=range(64))
    assert ((near - ref) ** 2).mean() < 0.5 * ((plain - ref) ** 2).mean()

    def features(img):  # a stand-in for a CNN's feature maps
        return [img, torch.nn.functional.avg_pool2d(img, 2)]

    sty = ImageGuidance(den, proc, ref, features=features, style_scale=1.0, scale=100.0)
    styled = ddim_sample(sty, proc, (64, 2, 8, 8), seeds=range(64))

    def gram_loss(x):
        return sum(((gram_matrix(f) - gram_matrix(r)) ** 2).sum((1, 2)) for f, r in zip(features(x), features(ref)))

    assert gram_loss(styled).mean() < 0.7 * gram_loss(plain).mean()
    with pytest.raises(ValueError, match="features"):
        ImageGuidance(den, proc, ref, style_scale=1.0)


def test_guidance_needs_the_sampling_process():
    base = GaussianDiffusion(cosine_betas(100))
    g = ClassifierGuidance(lambda x, t, y: x, toy_classifier, respace(base, "10"), 1.0)
    with pytest.raises(ValueError, match="not a step"):
        g(torch.zeros(1, 1, 2), torch.tensor([3]), y=torch.zeros(1, dtype=torch.long))


def test_clip_x0_modes():
    x0 = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 1, 2, 4]).reshape(4, 1, 1, 1)
    assert clip_x0(x0, None) is x0
    torch.testing.assert_close(clip_x0(x0, "static"), x0.clamp(-1, 1))
    s = dynamic_threshold_values(x0, 0.9).reshape(4, 1, 1, 1)
    dyn = clip_x0(x0, "dynamic", 0.9)
    torch.testing.assert_close(dyn, x0.clamp(-s, s) / s)
    assert dyn.abs().max() <= 1.0 and (s[0] == 1.0)  # samples already inside [-1, 1] keep scale 1
    with pytest.raises(ValueError, match="clip must be"):
        clip_x0(x0, "hard")
