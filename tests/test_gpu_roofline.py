"""Roofline of every benchmark case (dalle2_fast/bench/roofline.py) and the attention dispatch
order it justifies."""
import importlib
import json

import pytest
import torch

from dalle2_fast.bench import roofline as R
from dalle2_fast.bench.cli import FAMILIES


@pytest.mark.parametrize("family", ["attention", "codebook", "adagn", "sampling"])
def test_specs_name_the_same_cases_as_the_harness(family):
    """The roofline reads case shapes without building tensors; they must be the harness's cases."""
    mod = importlib.import_module(FAMILIES[family])
    built = mod.cases("cpu", quick=True)
    assert [(c.name, c.params) for c in built] == [(s["name"], s["params"]) for s in mod.specs("cpu", quick=True)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_gpu_benchmark_case_has_a_roofline(family):
    if R.no_roofline(family) is not None:  # says why instead (a service, a comparison with a peer library)
        assert len(R.no_roofline(family)) > 20 and not hasattr(importlib.import_module(FAMILIES[family]), "specs")
        return
    for spec in R.specs(family, "cuda"):
        w = R.case_work(family, spec, "cuda")
        assert w, spec["name"]
        for nbytes, flops, math in w.values():
            assert nbytes or flops, f"{family} {spec['name']}: neither bytes nor FLOPs"
            for g in R.ROOFLINE_GPUS:
                assert R.roof_time(R.GPUS[g], nbytes, flops, math) > 0


def test_roof_time_is_the_slower_of_bandwidth_and_math():
    h = R.GPUS["H100"]
    w = R.codebook_work(dict(N=16384, K=16384, D=256, dtype="torch.bfloat16"))
    nbytes, flops, math = w["triton"]
    assert flops == 2.0 * 16384 * 16384 * 256 and math == "bf16"
    assert R.roof_time(h, nbytes, flops, math) == pytest.approx(flops / 989.4e12)
    assert R.roof_time(h, 3.35e9, None, "fp32") == pytest.approx(1e-3)  # 3.35 GB at 3350 GB/s
    assert R.rate(h, "tf32x3") == pytest.approx(494.7e12 / 3)
    a = R.attention_work(dict(B=1, H=1, Sq=128, Sk=128, D=64, causal=True, mode="fwdbwd", dtype="torch.float32"))
    assert a["triton"][1] == pytest.approx(4 * 128 * 128 * 64 * 0.5 * 3.5) and a["triton"][2] == "tf32x3"
    assert a["cuda"][2] == "fp32" and a["torch"][0] > a["cuda"][0]  # explicit scores move more bytes


def test_attention_cuda_priority_follows_the_roofline_estimate():
    from dalle2_fast.ops.attention import attention_family

    for dt in ("torch.bfloat16", "torch.float16", "torch.float32"):
        for g in R.ROOFLINE_GPUS:
            assert attention_family.priority["cuda"] == R.attention_order(dt, g), (dt, g)


def test_peak_for_device_names():
    assert R.peak_for("NVIDIA H100 80GB HBM3").name.startswith("H100")
    assert R.peak_for("NVIDIA A100-SXM4-80GB").name.startswith("A100")
    assert R.peak_for("NVIDIA H200").hbm_gbps == 4800
    assert R.peak_for("NVIDIA GeForce RTX 4090") is None


def test_run_roofline_on_the_cpu_uses_the_measured_bounds():
    r = {"family": "adagn", "name": "x", "params": dict(shape=(2, 4, 8, 8), dtype="torch.float32", layout="nchw",
                                                        mode="fwd"), "times": {"cpu": 1e-3, "eager": 2e-3}}
    roof, what = R.run_roofline(r, {"copy_GBps": 10.0, "matmul_GFLOPs": 100.0}, "cpu")
    assert "measured" in what
    assert roof == {"cpu": pytest.approx(2 * 512 * 4 / 10e9), "eager": pytest.approx(2 * 512 * 4 / 10e9)}


def test_bench_reports_the_roofline_next_to_each_figure(tmp_path):
    from dalle2_fast.bench.cli import main

    assert main(["--ops", "sampling", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    for r in doc["results"]:
        assert set(r["roofline"]) == set(r["times"]) and all(v > 0 for v in r["roofline"].values())
    md = (tmp_path / "results.md").read_text()
    assert "% reached)" in md and "Roofline:" in md


def test_markdown_tables_render():
    text = R.markdown("cuda")
    for fam in FAMILIES:
        assert f"**{fam}**" in text
    assert "order by the estimate" in R.dispatch_markdown()


def test_doc_sections_are_up_to_date():
    from dalle2_fast.gpu_plan.plan import gpu_plan_text
    from dalle2_fast.gpu_plan.report import DOC

    doc = DOC.read_text()

    def section(name):
        return doc.split(f"<!-- BEGIN {name} -->\n", 1)[1].split(f"\n<!-- END {name} -->", 1)[0].strip()

    assert section("roofline") == R.markdown("cuda").strip()
    assert section("attention-dispatch") == R.dispatch_markdown().strip()
    assert section("gpu-plan") == gpu_plan_text().strip()
