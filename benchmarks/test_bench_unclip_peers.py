import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from benchmarks.conftest import case_params, run_benchmark  # noqa: E402
from dalle2_fast.bench.unclip_peers import cases  # noqa: E402


@pytest.mark.parametrize("case, variant", case_params(cases))
def test_unclip_peers(benchmark, case, variant):
    run_benchmark(benchmark, case, variant)
