"""Public kernel ops: one function per family, each dispatching over the backends
``torch`` / ``cpu`` / ``cuda`` / ``triton`` (see ``_backends``).

| family | op | plain-PyTorch reference |
|---|---|---|
| codebook nearest-neighbour | ``nearest_code`` | ``nearest_code_ref`` |
| fused AdaGN | ``adagn`` | ``adagn_ref`` |
| flash attention | ``attention`` | ``attention_ref`` |
| batched sampling steps | ``ddpm_step``, ``ddim_step``, ``dpmpp_2m_step``, ``predict_x0`` | ``sampling_step_ref`` |
"""
from dalle2_fast.ops._backends import BACKENDS, FAMILIES, BackendNotSupported
from dalle2_fast.ops.adagn import adagn, adagn_ref
from dalle2_fast.ops.attention import attention, attention_ref
from dalle2_fast.ops.codebook import nearest_code, nearest_code_ref
from dalle2_fast.ops.sampling import (
    ddim_coefs,
    ddim_step,
    ddpm_coefs,
    ddpm_step,
    dpmpp_2m_coefs,
    dpmpp_2m_step,
    dynamic_threshold_values,
    predict_x0,
    sampling_step_ref,
)

__all__ = [
    "BACKENDS", "FAMILIES", "BackendNotSupported",
    "nearest_code", "nearest_code_ref",
    "adagn", "adagn_ref",
    "attention", "attention_ref",
    "ddpm_step", "ddim_step", "dpmpp_2m_step", "predict_x0", "ddpm_coefs", "ddim_coefs",
    "dpmpp_2m_coefs", "dynamic_threshold_values", "sampling_step_ref",
]
