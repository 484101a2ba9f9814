"""The LAION / DALLE2-pytorch diffusion prior against DALLE2-pytorch itself, at a tiny size with
random weights: the reference builds and saves a trainer checkpoint (with its packaging Version),
we import it through the allow-listed loader and compare one forward pass per release era
(padding, truncation, an empty caption, timesteps 0 and T-1, embeddings whose norm is not 1,
dropped conditioning) and whole sampling runs (DDIM with eta = 1, DDPM) with the same noise.

The reference runs in a child process with its own packages (tests/_peers.py); without a
package registry to build them, these tests skip and say so."""
import json
from types import SimpleNamespace

import pytest
import torch

from dalle2_fast.diffusion.plan import NoiseSource
from dalle2_fast.interop.dalle2_pytorch import load_laion_prior
from tests._peers import dalle2_pytorch_env, run_reference

REF = __import__("pathlib").Path(__file__).with_name("_dalle2_reference.py")
T, DIM, L = 30, 32, 8


def _net(**over):
    net = dict(dim=DIM, depth=2, heads=4, dim_head=16, ff_mult=2, max_text_len=L, num_timesteps=T,
               normformer=True, attn_dropout=0.05, ff_dropout=0.05)
    net.update(over)
    return net


def _prior():
    return dict(image_embed_dim=DIM, timesteps=T, cond_drop_prob=0.1, condition_on_text_encodings=True)


def _text(lengths, width=6, seed=0):
    """Encodings (B, width, DIM) zero past each caption's length (what DALLE2-pytorch's CLIP
    adapters hand the prior), the mask we pass instead, and z_t with norms far from 1."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(lengths), width, DIM, generator=g)
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    enc = enc * mask[..., None]
    embed = torch.randn(len(lengths), DIM, generator=g) * 1.7
    return SimpleNamespace(tokens=enc, mask=mask, embed=embed)


def _reference(tmp_path, version, net, sample=(), forward=(), seed=0):
    if dalle2_pytorch_env(version)[0] is None:
        pytest.skip(dalle2_pytorch_env(version)[1])
    ckpt = tmp_path / "best.pth"
    spec = {"net": net, "prior": _prior(), "seed": seed, "checkpoint": str(ckpt), "forward": list(forward),
            "sample": list(sample)}
    torch.save(spec, tmp_path / "spec.pt")
    run_reference(version, REF, str(tmp_path / "spec.pt"), str(tmp_path / "out.pt"))
    (tmp_path / "prior_config.json").write_text(json.dumps({"prior": {"net": net, **_prior()}}))
    return ckpt, torch.load(tmp_path / "out.pt", weights_only=True)


def _forward_cases(new_api: bool):
    cases = []
    for lengths, width in (([6, 3, 1, 0], 6), ([10, 9, 2, 5], 10)):  # padded to L; cut at L
        text = _text(lengths, width, seed=width)
        x = torch.randn(4, DIM, generator=torch.Generator().manual_seed(1)) * 3
        t = torch.tensor([0, T - 1, 7, 15])
        drops = [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0)] if new_api else [(0.0, 0.0)]
        for td, idrop in drops:
            cases.append(dict(x=x, t=t, text_embed=text.embed, text_encodings=text.tokens, text_mask=text.mask,
                              text_drop=td, image_drop=idrop))
    return cases


def _ours_forward(model, case):
    B = case["x"].shape[0]
    drop = torch.full((B,), bool(case["text_drop"])) if model.config.null_conditioning else None
    image_drop = torch.full((B,), bool(case["image_drop"])) if model.config.null_conditioning else None
    with torch.no_grad():
        return model(case["x"], case["t"], case["text_encodings"], case["text_mask"], case["text_embed"],
                     drop=drop, image_drop=image_drop)


@pytest.mark.parametrize("version,attention,null_cond,net_over", [
    ("1.15.6", "cosine", True, {}),  # current: cosine attention, learned null conditioning
    ("1.15.6", "cosine", True, dict(num_timesteps=None, num_text_embeds=2, num_image_embeds=2, num_time_embeds=2,
                                    norm_in=True, normformer=False)),  # continuous time, several tokens each
    ("1.8.4", "cosine", False, {}),  # cosine attention, learned padding named null_text_embed, no CFG branch
    ("1.1.0", "pb_relax", False, {}),  # PB-relax attention (LAION's prior era): bias x 128
])
def test_forward_matches_dalle2_pytorch(tmp_path, version, attention, null_cond, net_over):
    new_api = version >= "1.9"
    cases = _forward_cases(new_api)
    strip = [{k: v for k, v in c.items() if k != "text_mask"} for c in cases]
    ckpt, out = _reference(tmp_path, version, _net(**net_over), forward=strip)
    model = load_laion_prior(ckpt)  # version and conventions from the file; prior_config.json beside it
    assert model.config.attention == attention and model.config.null_conditioning == null_cond
    assert model.config.source == f"dalle2-pytorch {version}"
    for case, expect in zip(cases, out["forward"]):
        torch.testing.assert_close(_ours_forward(model, case), expect, rtol=1e-5, atol=1e-5)
    # the EMA weights were chosen: the plain 'model' weights (shifted by 0.01 by the reference) differ
    other = load_laion_prior(ckpt, which="model")
    assert (_ours_forward(other, cases[0]) - out["forward"][0]).abs().max() > 1e-3


def test_wrong_era_conventions_are_visibly_wrong(tmp_path):
    """The release decides the attention: the same PB-relax-era file read with the cosine
    conventions (what loading it into current DALLE2-pytorch does) gives other numbers."""
    cases = _forward_cases(False)[:1]
    ckpt, out = _reference(tmp_path, "1.1.0", _net(), forward=[{k: v for k, v in cases[0].items()
                                                                   if k != "text_mask"}])
    wrong = load_laion_prior(ckpt, version="1.8.4")
    assert (_ours_forward(wrong, cases[0]) - out["forward"][0]).abs().max() > 1e-2


@pytest.mark.parametrize("steps,cond_scale", [(7, 1.0), (7, 3.0), (T, 2.0)])  # DDIM eta=1 (7 < T); DDPM (T)
def test_sampling_matches_dalle2_pytorch(tmp_path, steps, cond_scale):
    text = _text([6, 2, 4], seed=3)
    seeds = [11, 12, 13]
    src = NoiseSource(3, (DIM,), "cpu", torch.float32, seeds)
    noise = [src.draw() for _ in range(steps + 1)]  # x_T, then one per step, as our samplers draw them
    ckpt, out = _reference(tmp_path, "1.15.6", _net(), sample=[dict(
        text_embed=text.embed, text_encodings=text.tokens, steps=steps, cond_scale=cond_scale, noise=noise)])
    model = load_laion_prior(ckpt)
    got = model.sample_candidates(text, seeds, steps=steps, guidance=cond_scale, n_candidates=1)[0]
    torch.testing.assert_close(got, out["sample"][0]["z"], rtol=1e-4, atol=1e-5)


def test_old_release_refuses_guidance_and_drops(tmp_path):
    cases = _forward_cases(False)[:1]
    ckpt, _ = _reference(tmp_path, "1.8.4", _net(), forward=[])
    model = load_laion_prior(ckpt)
    text = SimpleNamespace(tokens=cases[0]["text_encodings"], mask=cases[0]["text_mask"], embed=cases[0]["text_embed"])
    with pytest.raises(ValueError, match="unconditional branch"):
        model.sample(text, [0, 1, 2, 3], steps=3, guidance=2.0)
    with pytest.raises(ValueError, match="unconditional branch"):
        model(cases[0]["x"], cases[0]["t"], text.tokens, text.mask, text.embed, drop=torch.ones(4, dtype=torch.bool))
