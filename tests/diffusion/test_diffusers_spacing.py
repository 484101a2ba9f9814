"""diffusers' timestep spacings in our respacing vocabulary ('linspaceN', 'leadingN', 'trailingN')
equal their schedulers' ``set_timesteps``; 'N' (ours, guided-diffusion's rounding) is documented to
differ from 'linspaceN' for some N, and does."""
import pytest

diffusers = pytest.importorskip("diffusers")

from dalle2_fast.diffusion import SamplingConfig  # noqa: E402
from dalle2_fast.diffusion.respace import space_timesteps  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 3, 7, 21, 25, 64, 333, 999, 1000])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacing_matches_ddpm_scheduler(spacing, n):
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    s.set_timesteps(n)
    assert space_timesteps(1000, f"{spacing}{n}") == sorted(set(s.timesteps.tolist()))


@pytest.mark.parametrize("n", [2, 7, 21, 25, 64, 999])
def test_linspace_is_unclip_scheduler(n):
    s = diffusers.UnCLIPScheduler()
    s.set_timesteps(n)
    assert space_timesteps(1000, f"linspace{n}") == sorted(s.timesteps.tolist())


def test_even_and_linspace_differ_where_documented():
    assert space_timesteps(1000, 21) != space_timesteps(1000, "linspace21")
    assert space_timesteps(1000, 25) == space_timesteps(1000, "linspace25")


def test_sampling_config_maps_int_steps_and_checks():
    assert SamplingConfig(spacing="linspace").steps(25) == "linspace25"
    assert SamplingConfig().steps(25) == 25 and SamplingConfig(spacing="leading").steps("ddim10") == "ddim10"
    assert SamplingConfig(sampler="ddpm").resolve(None, None, None) == ("ddpm", 0.0, None)
    with pytest.raises(ValueError, match="spacing"):
        SamplingConfig(spacing="karlo")
    with pytest.raises(ValueError, match="eta"):
        SamplingConfig(sampler="ddpm", eta=1.0)
    with pytest.raises(ValueError, match="linspaceN"):
        space_timesteps(1000, "linspaceX")
