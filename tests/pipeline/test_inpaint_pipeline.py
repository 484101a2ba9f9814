"""UnCLIPPipeline.inpaint / outpaint on the tiny pipeline: kept pixels exact at the output size
(and after 8-bit quantisation), the seed rule, batching, the documented edge cases (all-zero
mask -> the input, all-one -> plain generation) and bad input naming the argument."""
import inspect

import pytest
import torch

import torch.nn.functional as F

from dalle2_fast.inpainting import (EDIT_DEFAULTS, box_mask, context_image, harmonize, mix_embeddings, outpaint_canvas,
                                  stage_mask)
from tests._tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(prior_steps=2, decoder_steps=3, upsampler_steps=1)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _image(s=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, s, s, generator=g) * 2 - 1


def test_inpaint_keeps_pixels_and_follows_the_seed_rule(pipe):
    img = _image(pipe.image_size)
    fill = box_mask((8, 4, 24, 20), (32, 32))
    out = pipe.inpaint(img, fill, "a red circle", n=3, seed=7, jumps=(1, 2), batch_size=2, **FAST)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    keep = (fill == 0).expand(3, 3, 32, 32)
    want = ((img + 1) / 2).clamp(0, 1).expand(3, 3, 32, 32)
    assert torch.equal(out[keep], want[keep])
    assert not torch.equal(out[~keep], want[~keep])
    one = pipe.inpaint(img, fill, "a red circle", n=1, seed=8, jumps=(1, 2), **FAST)
    torch.testing.assert_close(one[0], out[1], atol=1e-5, rtol=0)  # image k is seed + k
    plain = pipe.inpaint(img, fill, "a red circle", n=1, seed=8, jumps=None, **FAST)
    assert torch.equal(plain[0][keep[0]], want[0][keep[0]])


def test_other_sizes_edge_cases_and_outpaint(pipe):
    img = _image(16)  # resized to the pipeline's 32
    fill = torch.zeros(16, 16)
    same = pipe.inpaint(img, fill, "a blue square", n=2, **FAST)  # nothing to fill: the input
    assert same.shape == (2, 3, 32, 32) and torch.equal(same[0], same[1])
    every = pipe.inpaint(_image(), torch.ones(32, 32), "a blue square", n=2, seed=3, **FAST)
    torch.testing.assert_close(every, pipe(["a blue square"], 2, seed=3, **FAST))  # plain generation
    out = pipe.outpaint(_image(), "right", 8, "a green star", n=1, **FAST)
    want = ((_image() + 1) / 2).clamp(0, 1)
    assert torch.equal(out[0, :, :, :24], want[:, :, 8:])
    canvas, f = outpaint_canvas(_image()[None], "up", 5)
    assert f[0, 0, :5].all() and not f[0, 0, 5:].any() and torch.equal(canvas[0, :, 5:], _image()[:, :27])


def test_bad_input(pipe):
    img, fill = _image(), box_mask((0, 0, 8, 8), (32, 32))
    cases = [
        (dict(mask=torch.ones(16, 32)), "mask must have the image's size"),
        (dict(mask=fill * 0.5), "mask must be binary"),
        (dict(mask="m.png"), "mask must be a tensor"),
        (dict(image=img * 3), "image must be in"),
        (dict(image=img[:1]), "image must be"),
        (dict(image=torch.cat([img, img[:1]])), "image must be"),
        (dict(method="glide"), "method must be one of"),
        (dict(method="conditioned"), "mask-conditioned decoder"),
        (dict(jumps=(0, 2)), "jump_length"),
        (dict(jumps=5), "jumps must be"),
        (dict(n=0), "n must be"),
        (dict(prompt=""), "prompt must be"),
        (dict(decoder_steps=0), "decoder_steps"),
        (dict(nonsense=1), "unknown options"),
        (dict(image_mix=1.5), "image_mix must be"),
        (dict(image_mix=True), "image_mix must be"),
        (dict(mask_reduce="mean"), "mask_reduce must be one of"),
    ]
    for over, msg in cases:
        kw = dict(image=img, mask=fill, prompt="a red circle", n=1, **FAST)
        kw.update(over)
        with pytest.raises(ValueError, match=msg):
            pipe.inpaint(kw.pop("image"), kw.pop("mask"), kw.pop("prompt"), **kw)
    with pytest.raises(ValueError, match="direction"):
        pipe.outpaint(img, "north", 4, "a red circle")
    with pytest.raises(ValueError, match="pixels"):
        pipe.outpaint(img, "left", 32, "a red circle")
    with pytest.raises(ValueError, match="box"):
        box_mask((4, 4, 2, 8), (32, 32))


def test_mask_reduce_at_lower_resolutions():
    g = torch.Generator().manual_seed(3)
    fill = (torch.rand(1, 1, 24, 24, generator=g) > 0.6).float()  # ragged: blocks partly filled
    blocks = fill.unfold(2, 4, 4).unfold(3, 4, 4).reshape(1, 1, 6, 6, 16)
    assert torch.equal(stage_mask(fill, 6, "max"), blocks.amax(-1))  # any pixel: the hole never shrinks
    assert torch.equal(stage_mask(fill, 6, "min"), blocks.amin(-1))  # every pixel
    torch.testing.assert_close(stage_mask(fill, 6, "area"), blocks.mean(-1))  # the fraction: a soft mask
    assert 0 < stage_mask(fill, 6, "area").unique().numel() - 2  # it is soft here
    assert torch.equal(stage_mask(fill, 24, "min"), fill)
    assert torch.equal(stage_mask(fill, 48, "area"), F.interpolate(fill, size=(48, 48), mode="nearest"))


def test_image_mix_slerps_toward_the_context_embedding():
    g = torch.Generator().manual_seed(4)
    z, c = torch.randn(3, 8, generator=g) * 2, torch.randn(1, 8, generator=g) * 5
    torch.testing.assert_close(mix_embeddings(z, c, 0.0), z)
    torch.testing.assert_close(mix_embeddings(z, c, 1.0), c.expand(3, -1))
    m = mix_embeddings(z, c, 0.5)
    torch.testing.assert_close(m.norm(dim=-1), (z.norm(dim=-1) + c.norm()) / 2)  # the norm interpolated
    cos = lambda a, b: F.cosine_similarity(a, b.expand_as(a), dim=-1)  # noqa: E731
    torch.testing.assert_close(cos(m, z / z.norm(dim=-1, keepdim=True)), cos(m, c))  # half-way on the arc
    img, fill = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, torch.zeros(1, 1, 8, 8)
    fill[..., 2:5, 3:7] = 1
    ctx = context_image(img, fill)
    keep = fill.expand_as(img) == 0
    assert torch.equal(ctx[keep], img[keep])
    mean = (img * (1 - fill)).sum((-2, -1)) / (1 - fill).sum()
    torch.testing.assert_close(ctx[0, :, 3, 4], mean[0])


def test_edit_options_reach_the_sampler_and_keep_pixels(pipe, monkeypatch):
    img, fill = _image(), box_mask((7, 3, 23, 19), (32, 32))  # odd edges: half-covered decoder pixels
    want = ((img + 1) / 2).clamp(0, 1)
    keep = (fill == 0).expand(3, 32, 32)
    seen = []
    decode = pipe.decode_embeddings
    monkeypatch.setattr(pipe, "decode_embeddings", lambda z, *a, **k: seen.append(z) or decode(z, *a, **k))
    base = pipe.inpaint(img, fill, "a red circle", n=1, seed=2, **FAST)[0]
    for kw in (dict(image_mix=0.5), dict(mask_reduce="max"), dict(mask_reduce="min")):  # against the default area
        out = pipe.inpaint(img, fill, "a red circle", n=1, seed=2, **kw, **FAST)[0]
        assert torch.equal(out[keep], want[keep]), kw  # the known pixels kept whatever the options
        if "mask_reduce" in kw:
            assert not torch.equal(out, base), kw  # the decoder's hole differs, so does the fill
    z_ctx = pipe._image_embed(context_image(img[None], fill[None, None]))
    torch.testing.assert_close(seen[1], mix_embeddings(seen[0], z_ctx, 0.5))  # the z_i the decoder got
    assert not torch.allclose(seen[1], seen[0])
    sig = inspect.signature(type(pipe).inpaint).parameters
    assert {k: sig[k].default for k in EDIT_DEFAULTS} == EDIT_DEFAULTS  # one set of defaults


def _harmonize_dense(out, known, fill, max_step):
    """The same least-squares problem solved densely, pixel by pixel (the oracle of ``harmonize``):
    every 4-neighbour pair inside the hole keeps the fill's difference, every pair across the
    border that differs by at most ``max_step`` in every channel asks the hole pixel to equal
    its kept neighbour (a larger step is left free)."""
    H, W = out.shape[-2:]
    hole = [(i, j) for i in range(H) for j in range(W) if fill[i, j]]
    idx = {p: k for k, p in enumerate(hole)}
    res = out.clone()
    for c in range(out.shape[0]):
        A, b = torch.zeros(len(hole), len(hole), dtype=torch.float64), torch.zeros(len(hole), dtype=torch.float64)
        for (i, j), k in idx.items():
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                q = (i + di, j + dj)
                if not (0 <= q[0] < H and 0 <= q[1] < W):
                    continue
                if q in idx:  # the correction h is smooth inside: (h_p - h_q)^2
                    A[k, k] += 1
                    A[k, idx[q]] -= 1
                elif float((known[:, q[0], q[1]] - out[:, i, j]).abs().max()) <= max_step:
                    A[k, k] += 1  # out_p + h_p should equal the kept neighbour
                    b[k] += float(known[c, q[0], q[1]] - out[c, i, j])
        A = A + 1e-9 * torch.eye(len(hole), dtype=torch.float64)  # a hole part with no matched pair: h = 0
        h = torch.linalg.solve(A, b)
        for (i, j), k in idx.items():
            res[c, i, j] = float(out[c, i, j] + h[k])
    return res.clamp(-1, 1)


def test_harmonize_matches_the_dense_solve_and_keeps_the_kept_pixels():
    g = torch.Generator().manual_seed(11)
    B, H, W = 2, 9, 13  # odd, non-square; two holes in one image, one touching the edge
    known = torch.rand(B, 3, H, W, generator=g) * 1.6 - 0.8
    fill = torch.zeros(B, 1, H, W)
    fill[0, 0, 2:5, 3:8] = 1
    fill[0, 0, 6:, 10:] = 1
    fill[1, 0, 1:8, 1:4] = 1
    out = torch.where(fill.bool(), (known + 0.4 * torch.rand(B, 3, H, W, generator=g) - 0.1).clamp(-1, 1), known)
    keep = ~fill.bool().expand_as(out)
    step = lambda x: (x[..., :, 1:] - x[..., :, :-1]).abs()[(fill[..., :, 1:] != fill[..., :, :-1]).expand(B, 3, H, W - 1)]  # noqa: E731
    for max_step in (2.0, 0.25):  # every border pair matched; only the close ones
        got = harmonize(out, known, fill, max_step=max_step, iters=2000, tol=1e-9)
        assert torch.equal(got[keep], out[keep])
        for i in range(B):
            want = _harmonize_dense(out[i], known[i], fill[i, 0].bool(), max_step)
            torch.testing.assert_close(got[i], want, atol=1e-4, rtol=0)
        if max_step > 1:  # every pair matched: the border step is spread over the hole
            assert step(got).mean() < 0.9 * step(out).mean()


def test_harmonize_leaves_an_edge_drawn_at_the_border():
    """A fill whose object reaches the border: the object's edge is not smeared into the
    background; the background's offset is corrected."""
    known = torch.full((1, 3, 12, 12), -0.2)
    fill = torch.zeros(1, 1, 12, 12)
    fill[..., 3:9, 3:9] = 1
    out = known.clone()
    out[..., 3:9, 3:9] = -0.1  # the fill's background: 0.1 off
    out[..., 3:9, 3:5] = 0.9  # an object touching the left border
    edge = lambda x: (x[..., 3:9, 3] - known[..., 3:9, 2]).abs()  # noqa: E731  the object's step at the border
    got = harmonize(out, known, fill)
    assert edge(got).min() > 0.9 * edge(out).min()  # kept crisp (shifted with the background's offset at most)
    assert (got[..., 3:9, 8] - known[..., 3:9, 9]).abs().max() < 0.03  # the background now meets its border
    smeared = harmonize(out, known, fill, max_step=2.0)
    assert edge(smeared).max() < 0.5 * edge(out).min()  # what matching every pair would do
