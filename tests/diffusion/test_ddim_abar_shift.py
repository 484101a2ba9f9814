"""ddim_table(abar_shift=-1): DALLE2-pytorch's prior DDIM, coefficient by coefficient, against
its update written out (alphas_cumprod_prev indexed by the timestep for the update, eps read
at alphas_cumprod of the timestep)."""
import pytest
import torch

from dalle2_fast.diffusion import GaussianDiffusion, cosine_betas
from dalle2_fast.diffusion.plan import ddim_table


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_shifted_ddim_table(eta):
    diff = GaussianDiffusion(cosine_betas(50), mean_type="x0")
    ab = diff.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    times = [47, 30, 12, 3, 0]  # ends at 0: its step goes to the end (x = x0)
    table = ddim_table(diff, torch.tensor(times)[:, None], eta, abar_shift=-1)[:, 0]  # (S, 10)
    for k, t in enumerate(times):
        a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
        torch.testing.assert_close(table[k, :4], torch.stack([a, s, 1 / a, 1 / s]))  # eps from x at abar_t
        if k == len(times) - 1:
            torch.testing.assert_close(table[k, 4:7], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
            continue
        alpha, alpha_next = ab_prev[t], ab_prev[times[k + 1]]
        c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c2 = ((1 - alpha_next) - c1**2).sqrt()
        torch.testing.assert_close(table[k, 4:7], torch.stack([alpha_next.sqrt(), c2, c1]))  # x0, eps, noise
    plain = ddim_table(diff, torch.tensor(times)[:, None], eta)[:, 0]
    assert (plain[:-1, 4:7] - table[:-1, 4:7]).abs().max() > 1e-3  # the shift changes the update
    with pytest.raises(ValueError, match="abar_shift"):
        ddim_table(diff, torch.tensor(times)[:, None], eta, abar_shift=1)
