"""Public kernel ops: one function per family, each dispatching over the backends
``torch`` / ``cpu`` / ``cuda`` / ``triton`` (see ``_backends``)."""
from dalle2_fast.ops._backends import BACKENDS, FAMILIES, BackendNotSupported
from dalle2_fast.ops.codebook import nearest_code, nearest_code_ref

__all__ = ["BACKENDS", "FAMILIES", "BackendNotSupported", "nearest_code", "nearest_code_ref"]
from dalle2_fast.ops.attention import attention, attention_ref  # noqa: E402

__all__ += ["attention", "attention_ref"]
from dalle2_fast.ops.sampling import (  # noqa: E402
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

__all__ += ["ddpm_step", "ddim_step", "dpmpp_2m_step", "predict_x0", "ddpm_coefs", "ddim_coefs",
            "dpmpp_2m_coefs", "dynamic_threshold_values", "sampling_step_ref"]
