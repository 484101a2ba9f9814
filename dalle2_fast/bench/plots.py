"""One PNG per benchmark family: achieved rate (or time) per case, one line per variant."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot_family(results: list[dict], family: str, path: Path) -> Path | None:
    rows = [r for r in results if r["family"] == family]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "tflops" if all("tflops" in r for r in rows) else ("gbps" if all("gbps" in r for r in rows) else None)
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, r in enumerate(rows):
        for label, t in r["times"].items():
            y = r[metric][label] * (1e3 if metric == "tflops" else 1.0) if metric else t * 1e3
            series[label].append((i, y))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 3), 4))
    for label, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel({"tflops": "GFLOP/s (higher is better)", "gbps": "GB/s (higher is better)"}.get(
        metric, "time per call, ms (lower is better)"))
    ax.set_title(f"{family} on {rows[0]['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
