"""Serving and batch-job throughput (issue 17), on a small randomly initialised unCLIP pipeline
(the recipe's architectures at toy widths, 16 -> 32 px, 4/4/2 steps: the cost of a request is the
networks', not the weights').

Service cases ``clients-C``, C = 1, 4, 16, 64 concurrent clients (each sending its share of
``max(16, 2C)`` one-image requests back to back), all variants in one run on loopback servers
started once:
- ``batched`` (ours): dynamic batching, up to 8 images a pass, every batch padded to 8 (the
  default: bytes independent of the batch);
- ``batched-exact``: the same without padding (``--exact-batch-shape``): what padding costs;
- ``one-at-a-time`` (baseline): the same requests sent by one client, one after another, to a
  server that draws one image per pass.
The time is the wall time of all the requests; images/s = requests / time; each variant's
p50/p95 request latency (of its last timed run) is in ``notes``.

Job cases ``job-N``: ``dalle2-fast sample --prompts-file`` of N one-image lines into a fresh
directory, wall time of the whole command (process start and model load included): one process
with one thread (baseline) and two processes of one thread each under ``torch.distributed.run``
(sharded by image); ``SETUPS`` lists them.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dalle2_fast.bench.core import Case, Variant

FAMILY = "serve"
NO_ROOFLINE = "requests per second of a loopback HTTP service: queueing and batching, not a fixed amount of work"
CLIENTS = (1, 4, 16, 64)
# (processes, threads each) of the batch-job cases. One process with two threads is left out of the
# committed run: on the shared 2-core machine its OpenMP threads slowed to ~1 image/s while other
# engineers' jobs ran, and the run did not finish in 50 minutes; add (1, 2) to measure it.
SETUPS = ((1, 1), (2, 1))
STEPS = dict(prior_steps=4, decoder_steps=4, upsampler_steps=2, prior_guidance=2.0, decoder_guidance=3.0)
PROMPTS = ["a red circle", "a blue square above a green triangle", "a yellow star", "a purple diamond on the left",
           "a green circle next to a red square", "a blue triangle"]


def small_pipeline():
    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.recipes.unclip import UnCLIPRecipe, build_pipeline

    r = UnCLIPRecipe(base_res=16, upsample_res=(32,), prior_width=32, prior_layers=1, decoder_channels=16,
                     upsampler_channels=16)
    p = build_pipeline(r, seed=0)
    return UnCLIPPipeline(p.clip, p.prior, p.decoder, p.upsamplers, defaults=STEPS)


_servers: dict = {}


def _server(pipe, name: str, **cfg):
    """A loopback server kept for the whole run (stopped at exit)."""
    if name not in _servers:
        from dalle2_fast.serve import ServeConfig
        from dalle2_fast.serve.server import BackgroundServer

        srv = BackgroundServer(pipe, ServeConfig(port=0, max_queue=4096, **cfg), log_level="error").__enter__()
        atexit.register(srv.__exit__, None, None, None)
        _servers[name] = srv
    return _servers[name]


def _requests(n: int, offset: int = 0):
    return [dict(prompt=PROMPTS[(offset + i) % len(PROMPTS)], n=1, seed=offset + i, response_format="b64_json")
            for i in range(n)]


def _load(url: str, clients: int, reqs: list[dict], latencies: list) -> None:
    """``clients`` threads share ``reqs`` (client c sends every clients-th, back to back)."""
    from dalle2_fast.serve.client import generate

    def client(c):
        out = []
        for body in reqs[c::clients]:
            r = generate(url, **body)
            if r.status != 200:
                raise RuntimeError(f"serve bench: HTTP {r.status}: {r.body}")
            out.append(r.seconds)
        return out

    latencies.clear()
    with cf.ThreadPoolExecutor(clients) as ex:
        for lat in ex.map(client, range(clients)):
            latencies.extend(lat)


def _notes(lat: dict) -> dict:
    from dalle2_fast.serve.metrics import percentile

    return {k: {"p50_ms": round(percentile(v, 50) * 1e3, 1), "p95_ms": round(percentile(v, 95) * 1e3, 1)}
            for k, v in lat.items() if v}


def _service_cases(quick: bool) -> list[Case]:
    pipe = small_pipeline()
    servers = {"batched": _server(pipe, "batched", max_batch=8, max_wait_ms=10),
               "batched-exact": _server(pipe, "batched-exact", max_batch=8, max_wait_ms=10, fixed_batch_shape=False),
               "one-at-a-time": _server(pipe, "one", max_batch=1, max_wait_ms=0, fixed_batch_shape=False)}
    out = []
    for c in (1, 16) if quick else CLIENTS:
        reqs = _requests(max(16, 2 * c) if not quick else max(8, c))
        lat = {k: [] for k in servers}
        variants = [Variant(k, (lambda k=k, c=c, reqs=reqs, lat=lat:  # bound now: cases run after all are built
                                _load(servers[k].url, 1 if k == "one-at-a-time" else c, reqs, lat[k])),
                            "baseline" if k == "one-at-a-time" else "ours") for k in servers]
        out.append(Case(FAMILY, f"clients-{c}", dict(clients=c, requests=len(reqs), images_per_request=1,
                                                      max_batch=8, **STEPS),
                        variants, "one-at-a-time", items=len(reqs), notes=lambda lat=lat: _notes(lat)))
    return out


def _job_run(workdir: Path, pipe_dir: Path, prompts: Path, procs: int, threads: int) -> None:
    out = workdir / f"out-{procs}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    job = ["-m", "dalle2_fast.cli", "sample", "--prompts-file", str(prompts), "--pipeline", str(pipe_dir),
           "--images-dir", str(out), "--batch-size", "8", "--quiet"]
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else []
    p = subprocess.run([sys.executable, *launch, *job], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"serve bench: the {procs}-process job failed ({p.returncode}): {p.stderr[-3000:]}")


def _job_cases(quick: bool) -> list[Case]:
    n = 200 if quick else 1000
    work = Path(tempfile.mkdtemp(prefix="dalle2-fast-bench-serve-"))
    atexit.register(shutil.rmtree, work, True)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small_pipeline().save_pretrained(work / "pipe")
    finally:
        torch.set_num_threads(n_threads)
    prompts = work / "prompts.txt"
    prompts.write_text("".join(f"{PROMPTS[i % len(PROMPTS)]} {i}\n" for i in range(n)))
    variants = [Variant(f"{p} proc x {t} thread", (lambda p=p, t=t: _job_run(work, work / "pipe", prompts, p, t)),
                        "baseline" if (p, t) == (1, 1) else "ours") for p, t in SETUPS]
    # each call is a fresh process (nothing to warm up); the whole command is timed
    return [Case(FAMILY, f"job-{n}", dict(images=n, batch_size=8, **STEPS), variants, "1 proc x 1 thread", items=n,
                 warmup=0)]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    if device != "cpu":
        return []  # measured on the CPU; on a GPU the same cases apply with the pipeline moved there
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return [Case(FAMILY, "service", {}, [], "one-at-a-time", missing={"service": str(e)})]
    return _service_cases(quick) + _job_cases(quick)


def plot(results: list[dict], path: Path) -> Path | None:
    """images/s against concurrent clients (each variant), and the batch job's images/s per setup."""
    svc = [r for r in results if r["name"].startswith("clients-")]
    jobs = [r for r in results if r["name"].startswith("job-")]
    if not svc and not jobs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for label in (svc[0]["times"] if svc else {}):
        xs = [r["params"]["clients"] for r in svc]
        ax.plot(xs, [r["items_per_s"][label] for r in svc], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images/s (higher is better)")
    ax.set_title("service: one-image requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for j, r in enumerate(jobs):
        labels = list(r["times"])
        ax.bar([f"{lb}\n({r['name']})" for lb in labels], [r["items_per_s"][lb] for lb in labels],
               color=["#888", "#4a7", "#37c"][: len(labels)])
    ax.set_ylabel("images/s, whole command (higher is better)")
    ax.set_title("batch job (sample --prompts-file)")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["cases", "plot", "small_pipeline", "FAMILY"]
