"""SplitGuidance: three-branch classifier-free guidance with a scale per condition, checked
against the formula computed from three separate model calls, against ClassifierFreeGuidance
at equal scales, with a learned variance and with a batched key/value cache kwarg."""
import pytest
import torch

from dalle2_fast.diffusion import ClassifierFreeGuidance, SplitGuidance
from dalle2_fast.nn import KVCache


def toy(x, t, a, b, learned=False):
    """A model whose output depends nonlinearly on x, t and both conditions (B, 1) each."""
    h = torch.tanh(x * (1 + a[:, :, None, None]) + b[:, :, None, None] ** 2 + t[:, None, None, None] / 100)
    return torch.cat([h, h.flip(1) * 0.3], 1) if learned else h


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("sa, sb", [(3.0, 3.0), (1.0, 5.0), (4.0, 0.0), (2.5, 7.0)])
def test_split_guidance_is_the_three_branch_formula(learned, sa, sb):
    g = torch.Generator().manual_seed(int(sa * 10 + sb))
    B = 5  # odd batch: rows cannot line up by accident
    x, t = torch.randn(B, 3, 4, 4, generator=g), torch.randint(0, 1000, (B,), generator=g)
    a, b = torch.randn(B, 1, generator=g), torch.randn(B, 1, generator=g)
    na, nb = torch.zeros(1, 1), torch.full((1, 1), -0.5)  # batch-1 null values broadcast
    model = lambda x, t, a, b: toy(x, t, a, b, learned)  # noqa: E731
    out = SplitGuidance(model, sa, sb, {"b": nb}, {"a": na, "b": nb})(x, t, a=a, b=b)
    both, first = model(x, t, a, b), model(x, t, a, nb.expand(B, 1))
    none = model(x, t, na.expand(B, 1), nb.expand(B, 1))
    want = none[:, :3] + sa * (first[:, :3] - none[:, :3]) + sb * (both[:, :3] - first[:, :3])
    torch.testing.assert_close(out[:, :3], want, atol=1e-5, rtol=1e-5)
    if learned:  # the variance channels from the fully conditional rows
        torch.testing.assert_close(out[:, 3:], both[:, 3:])
    if sa == sb:  # one scale: what two-branch CFG computes
        cfg = ClassifierFreeGuidance(model, sa, {"a": na, "b": nb})(x, t, a=a, b=b)
        torch.testing.assert_close(out, cfg, atol=1e-5, rtol=1e-5)


def test_split_guidance_pairs_batched_objects_and_checks_keys():
    class Rows:  # a minimal cat_batch / expand object, like a KVCache
        def __init__(self, v):
            self.v = v

        def expand(self, B):
            return Rows(self.v.expand(B, *self.v.shape[1:]))

        def cat_batch(self, other):
            return Rows(torch.cat([self.v, other.v]))

    seen = {}

    def model(x, t, c):
        seen["c"] = c.v
        return x * c.v[:, :, None, None]

    x, t = torch.randn(2, 1, 2, 2), torch.zeros(2)
    SplitGuidance(model, 2.0, 3.0, {"c": Rows(torch.ones(1, 1))}, {"c": Rows(torch.zeros(1, 1))})(
        x, t, c=Rows(torch.tensor([[5.0], [6.0]])))
    assert seen["c"].flatten().tolist() == [5.0, 6.0, 1.0, 1.0, 0.0, 0.0]
    assert hasattr(KVCache, "cat_batch")  # the object the decoder passes this way
    with pytest.raises(ValueError, match="did not pass"):
        SplitGuidance(model, 2.0, 3.0, {"d": torch.ones(1)}, {})(x, t, c=Rows(torch.ones(2, 1)))
    with pytest.raises(ValueError, match="scale_b"):
        SplitGuidance(model, 2.0, "3", {}, {})
