import pytest

from benchmarks.conftest import case_params, run_benchmark
from dalle2_fast.bench.unclip import cases


@pytest.mark.parametrize("case, variant", case_params(cases))
def test_unclip(benchmark, case, variant):
    run_benchmark(benchmark, case, variant)
