"""nn.Transformer (the priors' pre-LN stack on nn.Attention): against a float64 written-out
reference with causal + padding masks on awkward shapes, causality and padding by perturbation,
gradients, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_fast.nn import Transformer, TransformerBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(model: Transformer, x: torch.Tensor, kpm: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The stack written out in float64: x + pos; per block x += W_o softmax(q k^T / sqrt(d) + mask) v
    of LN(x), x += MLP(LN(x)); final LN. qkv channels are [q|k|v][head][c]."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    b, s, w = x.shape
    x = x.double() + sd["pos"][:s]
    allowed = torch.ones(s, s, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    allowed = allowed.expand(b, 1, s, s)
    if kpm is not None:
        allowed = allowed & ~kpm[:, None, None, :]
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        heads = blk.attn.heads
        h = F.layer_norm(x, (w,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        qkv = (h @ sd[p + "attn.to_qkv.weight"].T + sd[p + "attn.to_qkv.bias"]).view(b, s, 3, heads, w // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, S, d) each
        att = (q @ k.transpose(-1, -2) / math.sqrt(w // heads)).masked_fill(~allowed, float("-inf")).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(b, s, w)
        x = x + a @ sd[p + "attn.to_out.weight"].T + sd[p + "attn.to_out.bias"]
        h = F.layer_norm(x, (w,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        h = F.gelu(h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"])
        x = x + h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
    return F.layer_norm(x, (w,), sd["ln.weight"], sd["ln.bias"])


@pytest.mark.parametrize("b,s,width,heads,layers,causal,padded", [
    (3, 7, 24, 3, 2, True, True),    # causal + padding (the priors' case); 7 tokens, 8 channels per head
    (1, 1, 16, 1, 1, True, False),   # batch 1, one token, one head
    (2, 13, 20, 5, 3, False, True),  # bidirectional with padding; head dim 4
    (2, 9, 32, 4, 1, True, False),   # plain causal (no mask tensor)
])
def test_matches_float64_reference(b, s, width, heads, layers, causal, padded):
    torch.manual_seed(0)
    m = Transformer(width, layers, heads, max_len=s + 3, causal=causal)
    x = torch.randn(b, s, width)
    kpm = None
    if padded:
        kpm = torch.rand(b, s) < 0.4  # True = padding
        kpm[:, 0] = False  # every query keeps a key (token 0 is visible to all)
    out = m(x, key_padding_mask=kpm)
    assert out.shape == (b, s, width)
    torch.testing.assert_close(out.double(), reference(m, x, kpm, causal), atol=2e-5, rtol=1e-4)


def test_causality_and_padding_by_perturbation():
    torch.manual_seed(1)
    m = Transformer(24, 2, 2, max_len=10)
    x = torch.randn(2, 10, 24)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[:, 3] = True
    out = m(x, kpm)
    x2 = x.clone()
    x2[:, 6] += torch.randn(2, 24)  # a later token (not a constant shift, which a LayerNorm removes): earlier outputs must not move, later ones must
    out2 = m(x2, kpm)
    torch.testing.assert_close(out2[:, :6], out[:, :6])
    assert not torch.allclose(out2[:, 6:], out[:, 6:])
    x3 = x.clone()
    x3[:, 3] = torch.randn(2, 24) * 10  # a padded token: only its own output may change
    out3 = m(x3, kpm)
    keep = [i for i in range(10) if i != 3]
    torch.testing.assert_close(out3[:, keep], out[:, keep])


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    m = Transformer(16, 2, 2, max_len=5)
    x = torch.randn(3, 5, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="divisible by heads"):
        TransformerBlock(30, 4)
    with pytest.raises(ValueError, match="layers and max_len"):
        Transformer(16, 0, 2, 4)
    m = Transformer(16, 1, 2, max_len=4)
    with pytest.raises(ValueError, match="sequence length 5 > max_len 4"):
        m(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match=r"x must be \(B, S, 16\)"):
        m(torch.randn(1, 3, 15))
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        m(torch.randn(2, 3, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
