"""nn.Attention: guided-diffusion checkpoint compatibility (both qkv orders), cross and
concatenated context attention, padding and causality by perturbation, QK norm, bad config."""
import pytest
import torch

from dalle2_fast.nn import Attention
from dalle2_fast.ops import attention_ref


@pytest.mark.parametrize("new_order", [False, True])
def test_matches_guided_diffusion_attention_block(new_order):
    unet = pytest.importorskip("guided_diffusion.unet")
    torch.manual_seed(0)
    block = unet.AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order).eval()
    torch.nn.init.normal_(block.proj_out.weight, std=0.05)  # zero-initialised in the peer
    ours = Attention(64, dim_head=16, qkv_layout="new" if new_order else "legacy", backend="torch").eval()
    ours.load_conv1d_qkv(block.qkv.weight, block.qkv.bias, block.proj_out.weight, block.proj_out.bias)
    x = torch.randn(2, 64, 5, 7)  # (B, C, H, W): 35 tokens, not a tile multiple
    with torch.no_grad():
        expect = block(x)
        tokens = block.norm(x.reshape(2, 64, -1)).transpose(1, 2)  # (B, T, C)
        got = x + ours(tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_layouts_differ():
    """The two layouts read the same weights differently (a flag that did nothing would pass
    the peer test only for one order)."""
    torch.manual_seed(1)
    a = Attention(32, heads=4, qkv_layout="new", backend="torch")
    b = Attention(32, heads=4, qkv_layout="legacy", backend="torch")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 32)
    assert not torch.allclose(a(x), b(x), atol=1e-3)


def test_heads_by_count_or_by_channels():
    assert Attention(96, heads=3).dim_head == 32
    assert Attention(96, dim_head=32).heads == 3
    m = Attention(64, heads=2, dim_head=40)  # inner width 80 != dim
    assert m.to_out.in_features == 80 and m(torch.randn(1, 3, 64)).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="heads or dim_head"):
        Attention(64)
    with pytest.raises(ValueError, match="multiple of dim_head"):
        Attention(64, dim_head=24)
    with pytest.raises(ValueError, match="qkv_layout"):
        Attention(64, heads=2, qkv_layout="old")


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
