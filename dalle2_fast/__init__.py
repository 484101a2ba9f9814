"""dalle2_fast: DALL-E 2 (unCLIP) and the models it grew from, on our own kernels.

Layers (imports point down): cli/serve -> recipes -> train -> pipeline -> interop -> models -> diffusion
-> nn -> ops -> kernels (docs/architecture.md).
"""
__version__ = "0.1.0"

from dalle2_fast import ops  # noqa: F401  (registers the custom ops)


def __getattr__(name):  # lazy: the pipeline pulls in open_clip
    if name == "UnCLIPPipeline":
        from dalle2_fast.pipeline import UnCLIPPipeline

        return UnCLIPPipeline
    raise AttributeError(f"module 'dalle2_fast' has no attribute {name!r}")
