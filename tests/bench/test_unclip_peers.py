"""The unclip-peers family through the harness at its quick size: both pipelines run on the same
weights, the diffusers variants are the baselines, and the report writes per-stage numbers."""
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dalle2_fast.bench import cli, unclip_peers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_quick_run_times_ours_against_diffusers(tmp_path):
    assert cli.main(["--ops", "unclip-peers", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    by_name = {r["name"]: r for r in doc["results"]}
    assert set(by_name) == {"karlo-reduced-quick-fp32", "karlo-reduced-quick-bf16"}
    fp32 = by_name["karlo-reduced-quick-fp32"]
    assert set(fp32["times"]) == {"ours", "ours-channels-last", "ours-winograd-channels-last", "diffusers"} and fp32["baseline"] == "diffusers"
    assert fp32["kinds"]["diffusers"] == "peer" and all(t > 0 for t in fp32["times"].values())
    assert (tmp_path / "unclip-peers.png").stat().st_size > 1000


def test_same_images_from_both_pipelines():
    """The comparison is of the same computation: with equal latents/noise the images agree (the
    importer test proves this in detail; here: the benchmark's own pipelines, a cheap check)."""
    p = unclip_peers.pipelines(quick=True)
    a = unclip_peers.call("ours", quick=True)
    b = unclip_peers.call("ours-channels-last", quick=True)
    assert a.shape == (2, 3, 32, 32)
    assert (a - b).abs().max() < 1e-4
    c = unclip_peers.call("ours-winograd-channels-last", quick=True)  # Winograd rounding: close, not equal
    assert (a - c).abs().max() < 1e-3
    assert p["ref"].decoder.config.sample_size == 16
