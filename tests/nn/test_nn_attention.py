"""nn.Attention: guided-diffusion / GLIDE checkpoint compatibility through the interop's
state-dict mapping (both qkv orders, head-major encoder_kv), cross and concatenated context
attention, padding and causality by perturbation, QK norm, bad config."""
import pytest
import torch
import torch.nn.functional as F

from dalle2_fast.interop.guided_diffusion import attention_from_guided
from dalle2_fast.nn import Attention
from dalle2_fast.ops import attention_ref


@pytest.mark.parametrize("new_order", [False, True])
def test_matches_guided_diffusion_attention_block(new_order):
    """Both of guided-diffusion's qkv orders land on our one layout through the interop's
    state-dict mapping (the legacy order is head-major: its rows are permuted)."""
    unet = pytest.importorskip("guided_diffusion.unet")
    torch.manual_seed(0)
    block = unet.AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order).eval()
    torch.nn.init.normal_(block.proj_out.weight, std=0.05)  # zero-initialised in the peer
    ours = Attention(64, dim_head=16, backend="torch").eval()
    ours.load_state_dict(attention_from_guided(block.state_dict(), heads=4, head_major=not new_order), strict=True)
    x = torch.randn(2, 64, 5, 7)  # (B, C, H, W): 35 tokens, not a tile multiple
    with torch.no_grad():
        expect = block(x)
        tokens = block.norm(x.reshape(2, 64, -1)).transpose(1, 2)  # (B, T, C)
        got = x + ours(tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def _glide_attention(x, enc, sd, heads):
    """GLIDE / unCLIP's AttentionBlock core written out from its definition: conv1d projections,
    head-major [head][q|k|v][c] qkv and [head][k|v][c] encoder_kv, each head's keys/values are
    [encoder tokens; own tokens]. x: (B, C, T) normed tokens, enc: (B, Ce, Tc) -> (B, C, T)."""
    B, C, T = x.shape
    ch = C // heads
    q, k, v = F.conv1d(x, sd["qkv.weight"], sd["qkv.bias"]).reshape(B * heads, 3 * ch, T).split(ch, dim=1)
    ek, ev = F.conv1d(enc, sd["encoder_kv.weight"], sd["encoder_kv.bias"]).reshape(B * heads, 2 * ch, -1).split(ch, 1)
    k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)  # (B*heads, ch, Tc + T)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / ch**0.5, dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(B, C, T)
    return F.conv1d(a, sd["proj_out.weight"], sd["proj_out.bias"])


def test_glide_encoder_kv_head_major():
    """GLIDE-style context attention (head-major qkv AND encoder_kv) maps onto 'concat' mode:
    the same numbers as the written-out original, and not with the permutation left out."""
    torch.manual_seed(5)
    C, Ce, heads = 48, 20, 3
    sd = {"qkv.weight": torch.randn(3 * C, C, 1) / C**0.5, "qkv.bias": torch.randn(3 * C) * 0.1,
          "encoder_kv.weight": torch.randn(2 * C, Ce, 1) / Ce**0.5, "encoder_kv.bias": torch.randn(2 * C) * 0.1,
          "proj_out.weight": torch.randn(C, C, 1) / C**0.5, "proj_out.bias": torch.randn(C) * 0.1}
    x, enc = torch.randn(2, C, 13), torch.randn(2, Ce, 6)
    ours = Attention(C, heads=heads, context_dim=Ce, context_mode="concat", backend="torch")
    ours.load_state_dict(attention_from_guided(sd, heads, head_major=True), strict=True)
    with torch.no_grad():
        got = ours(x.transpose(1, 2), enc.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(got, _glide_attention(x, enc, sd, heads), rtol=1e-5, atol=1e-5)
        ours.load_state_dict(attention_from_guided(sd, heads, head_major=False))
        wrong = ours(x.transpose(1, 2), enc.transpose(1, 2)).transpose(1, 2)
    assert not torch.allclose(wrong, got, atol=1e-3)


def test_concat_mode_without_context_is_self_attention():
    """The U-Net calls its context-capable blocks without context too: 'concat' mode then
    attends to x alone (the context projection unused); 'cross' mode refuses."""
    torch.manual_seed(1)
    m = Attention(32, heads=4, context_dim=8, context_mode="concat", backend="torch")
    plain = Attention(32, heads=4, backend="torch")
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "context" not in k})
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(m(x), plain(x))
    assert not torch.allclose(m(x, torch.randn(2, 3, 8)), plain(x), atol=1e-4)  # context does act
    with pytest.raises(ValueError, match="context_mask must be"):
        m(x, context_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="without context_dim"):
        plain(x, torch.randn(2, 3, 8))


def test_heads_by_count_or_by_channels():
    assert Attention(96, heads=3).dim_head == 32
    assert Attention(96, dim_head=32).heads == 3
    m = Attention(64, heads=2, dim_head=40)  # inner width 80 != dim
    assert m.to_out.in_features == 80 and m(torch.randn(1, 3, 64)).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="heads or dim_head"):
        Attention(64)
    with pytest.raises(ValueError, match="multiple of dim_head"):
        Attention(64, dim_head=24)
    with pytest.raises(ValueError, match="context_mode"):
        Attention(64, heads=2, context_dim=8, context_mode="prefix")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_cross_attention_matches_manual_and_ignores_padding(backend):
    torch.manual_seed(2)
    m = Attention(48, heads=3, context_dim=20, backend=backend)
    x, ctx = torch.randn(2, 10, 48), torch.randn(2, 7, 20)
    mask = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])  # True = padded context token
    out = m(x, ctx, mask)
    q = m.to_q(x).view(2, 10, 3, 16).transpose(1, 2)
    kv = m.to_kv(ctx).view(2, 7, 2, 3, 16)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    ref = attention_ref(q, k, v, key_padding_mask=mask).transpose(1, 2).reshape(2, 10, 48)
    torch.testing.assert_close(out, m.to_out(ref), rtol=1e-5, atol=1e-5)
    ctx2 = ctx.clone()
    ctx2[0, 5:] = torch.randn(2, 20) * 10  # change only padded tokens
    torch.testing.assert_close(m(x, ctx2, mask), out)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_concat_context_causal(backend):
    """GLIDE-style [context; x] keys with causal=True: token t sees every context token and
    x tokens <= t (bottom-right alignment), checked by perturbing inputs."""
    torch.manual_seed(3)
    m = Attention(32, dim_head=8, context_dim=12, context_mode="concat", causal=True, backend=backend)
    x, ctx = torch.randn(1, 6, 32), torch.randn(1, 4, 12)
    out = m(x, ctx)
    x2 = x.clone()
    x2[:, 4] += 1.0  # later token changes: earlier outputs must not
    out2 = m(x2, ctx)
    torch.testing.assert_close(out2[:, :4], out[:, :4])
    assert not torch.allclose(out2[:, 4:], out[:, 4:])
    ctx2 = ctx.clone()
    ctx2[:, -1] += 1.0  # the last context token is visible to the first x token
    assert not torch.allclose(m(x, ctx2)[:, 0], out[:, 0])


def test_qk_norm_and_gradients():
    torch.manual_seed(4)
    m = Attention(32, heads=2, qk_norm=True, backend="cpu")
    x = torch.randn(2, 11, 32, requires_grad=True)
    out = m(x)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and m.q_norm.weight.grad is not None
    # q_norm really acts: scaling its weight changes the logits, hence the output
    with torch.no_grad():
        m.q_norm.weight.mul_(3.0)
    assert not torch.allclose(m(x), out, atol=1e-4)


def test_bad_forward_input():
    m = Attention(32, heads=2, context_dim=8)
    with pytest.raises(ValueError, match="context must be given"):
        m(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match=r"x must be \(B, T, 32\)"):
        m(torch.randn(1, 3, 31), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="context must be"):
        m(torch.randn(1, 3, 32), torch.randn(1, 2, 9))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_self_attention_key_padding_matches_manual(backend):
    """Self-attention with padded x tokens (the priors' text padding), causal, bottom-right."""
    torch.manual_seed(5)
    m = Attention(24, heads=3, causal=True, backend=backend)
    x = torch.randn(3, 9, 24)
    kpm = torch.rand(3, 9) < 0.4
    kpm[:, 0] = False  # True = padded; token 0 keeps every causal row non-empty
    out = m(x, key_padding_mask=kpm)
    q, k, v = m.to_qkv(x).view(3, 9, 3, 3, 8).permute(2, 0, 3, 1, 4)
    ref = attention_ref(q, k, v, causal=True, key_padding_mask=kpm).transpose(1, 2).reshape(3, 9, 24)
    torch.testing.assert_close(out, m.to_out(ref), rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[kpm] = torch.randn(int(kpm.sum()), 24) * 10  # padded tokens change: only their own rows may
    torch.testing.assert_close(m(x2, key_padding_mask=kpm)[~kpm], out[~kpm])


def test_concat_context_with_own_key_padding():
    """'concat' mode: the x tokens' padding joins the context's: [context_mask; key_padding_mask]."""
    torch.manual_seed(6)
    m = Attention(16, heads=2, context_dim=8, context_mode="concat", backend="torch")
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    cmask = torch.tensor([[False, False, True], [False, False, False]])
    kpm = torch.tensor([[False, True, False, False, False], [False, False, False, True, True]])
    out = m(x, ctx, cmask, key_padding_mask=kpm)
    q, k, v = m.to_qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ck, cv = m.to_context_kv(ctx).view(2, 3, 2, 2, 8).permute(2, 0, 3, 1, 4)
    ref = attention_ref(q, torch.cat([ck, k], 2), torch.cat([cv, v], 2),
                        key_padding_mask=torch.cat([cmask, kpm], 1)).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(out, m.to_out(ref), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(m(x, ctx, cmask), out, atol=1e-4)  # the x padding really acts


def test_key_padding_mask_errors():
    m = Attention(16, heads=2)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, T\) = \(2, 3\)"):
        m(torch.randn(2, 3, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    cross = Attention(16, heads=2, context_dim=8)
    with pytest.raises(ValueError, match="use context_mask"):
        cross(torch.randn(1, 3, 16), torch.randn(1, 2, 8), key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
