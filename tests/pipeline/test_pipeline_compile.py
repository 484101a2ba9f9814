"""UnCLIPPipeline.compile(): every stage's network goes through torch.compile (here the 'eager'
backend: dynamo traces our modules and custom ops without a C++ toolchain) and the images stay
those of the uncompiled pipeline; the CLI's --compile is refused where it cannot apply."""
import pytest
import torch

from dalle2_fast.cli import main as cli_main
from tests._tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_pipeline_draws_the_same_images():
    torch._dynamo.reset()
    want = tiny_pipeline()(["a red circle", "a blue square"], seed=3)
    pipe = tiny_pipeline().compile(backend="eager")
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in (pipe.prior, pipe.decoder,
                                                                                *pipe.upsamplers))
    torch.testing.assert_close(pipe(["a red circle", "a blue square"], seed=3), want, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()


def test_cli_compile_is_refused_with_a_checkpoint(tmp_path):
    with pytest.raises((SystemExit, ValueError), match="compile"):
        cli_main(["sample", "--checkpoint", str(tmp_path), "--compile", "-o", str(tmp_path / "a.png")])
