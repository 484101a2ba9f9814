"""Public kernel ops: one function per family, each dispatching over the backends
``torch`` / ``cpu`` / ``cuda`` / ``triton`` (see ``_backends``)."""
from dalle2_fast.ops._backends import BACKENDS, FAMILIES, BackendNotSupported
from dalle2_fast.ops.codebook import nearest_code, nearest_code_ref

__all__ = ["BACKENDS", "FAMILIES", "BackendNotSupported", "nearest_code", "nearest_code_ref"]
from dalle2_fast.ops.attention import attention, attention_ref  # noqa: E402

__all__ += ["attention", "attention_ref"]
