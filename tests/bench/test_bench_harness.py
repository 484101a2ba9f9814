"""The benchmark harness: a quick run writes a valid results.json with every available backend
of each family present, plots and a Markdown table; a missing peer is reported as missing."""
import importlib.util
import json

import pytest

from dalle2_fast.bench import cli
from dalle2_fast.ops._backends import FAMILIES

OP_FAMILY = {"codebook": "nearest_code", "adagn": "adagn", "attention": "attention"}


def _run(tmp_path, ops):
    assert cli.main(["--ops", ops, "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    return json.loads((tmp_path / "results.json").read_text())


def test_quick_run_writes_results_with_every_backend(tmp_path):
    doc = _run(tmp_path, "codebook")
    assert {"machine", "bounds", "results"} <= doc.keys()
    assert doc["machine"]["git_commit"] and doc["bounds"]["copy_GBps"] > 0
    assert doc["results"], "no cases ran"
    for r in doc["results"]:
        fam = FAMILIES[OP_FAMILY[r["family"]]]
        expected = {b for b in fam.available("cpu") if b != "triton"}
        assert expected <= set(r["times"]), (expected, r["times"].keys())
        assert r["baseline"] in r["times"] and r["ratios"][r["baseline"]] == pytest.approx(1.0)
        assert all(t > 0 for t in r["times"].values())
    assert (tmp_path / "results.md").read_text().count("| codebook |") >= 3
    assert (tmp_path / "codebook.png").stat().st_size > 1000


def test_missing_peer_is_reported(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    doc = _run(tmp_path, "codebook")
    for r in doc["results"]:
        assert "faiss" not in r["times"]
        assert "faiss" in r["missing"] and "not installed" in r["missing"]["faiss"]
    assert "faiss (missing)" in (tmp_path / "results.md").read_text()


def test_unknown_family_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["--ops", "nope"])


def test_items_per_second_and_notes_are_reported(tmp_path):
    """A case that counts items (images) gets items/s per variant, and its notes (e.g. latency
    percentiles) land in the result and the table."""
    from dalle2_fast.bench.core import Case, Variant, run_case

    case = Case("serve", "toy", {}, [Variant("a", lambda: sum(range(1000))), Variant("b", lambda: None, "baseline")],
                "b", items=10, notes=lambda: {"a": {"p50_ms": 1.5}})
    r = run_case(case, repeats=1)
    assert set(r["items_per_s"]) == {"a", "b"} and all(v > 0 for v in r["items_per_s"].values())
    assert r["notes"] == {"a": {"p50_ms": 1.5}}
    row = "\n".join(cli._fmt_row(r, {}))
    assert "images/s" in row and "p50_ms 1.5" in row


def test_the_serve_family_draws_its_own_plot(tmp_path):
    from dalle2_fast.bench import serve

    def res(name, params, times):
        return {"family": "serve", "name": name, "params": params, "times": times,
                "items_per_s": {k: 16 / t for k, t in times.items()}}

    results = [res(f"clients-{c}", {"clients": c}, {"batched": 1.0 / c ** 0.5, "one-at-a-time": 1.0})
               for c in (1, 4, 16)] + [res("job-100", {}, {"1 proc x 1 thread": 2.0, "2 proc x 1 thread": 1.2})]
    assert serve.plot(results, tmp_path / "serve.png").stat().st_size > 5000
