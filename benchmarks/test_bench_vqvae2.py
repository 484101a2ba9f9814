import pytest

from benchmarks.conftest import case_params, run_benchmark
from dalle2_fast.bench.vqvae2 import cases


@pytest.mark.parametrize("case, variant", case_params(cases))
def test_vqvae2_sampling(benchmark, case, variant):
    run_benchmark(benchmark, case, variant)
    benchmark.extra_info.update(codes=case.params["codes"], images=case.params["images"])
