"""Family ``caches`` (issue 19): what computing each thing once buys, every lever against its
uncached path and the peers in one run.

- ``prior-matched``: the issue's matched configuration (width 256, depth 6, 77 text tokens, 64
  DDIM steps, 16 embeddings, one candidate, no guidance): our :class:`DiffusionPrior` and our
  :class:`LaionDiffusionPrior` (DALLE2-pytorch's network on our layers), each with the prefix
  cache and without, and DALLE2-pytorch's own prior (1.15.6, a child process under
  ``.venv-peers/`` kept alive and driven over a pipe, so its timing holds only the sampling
  loop). Prior steps/s in the notes; FLOPs are the cached path's useful work, so GFLOP/s
  against the ``matmul_GFLOPs`` bound of the same run is the prior's share of the GEMM rate.
- ``prior-karlo-reduced``: Karlo's prior architecture at the reduced width of ``unclip-peers``,
  the same random weights in diffusers' ``PriorTransformer`` (diffusers' prior loop: the
  ``UnCLIPPipeline``'s, CFG 4, ``UnCLIPScheduler``) and imported into ours (cached / uncached).
- ``ar-prior``: the autoregressive prior's embeddings/s, KV-cached decoding vs re-running the
  sequence for every code.
- ``decoder-step``: one guided call of the shipped decoder (4 images, CFG rows) with the U-Net's
  context K/V cache vs without.
- ``pipeline``: the shipped pipeline end to end (4 prompts, default quality), all caches vs
  none (the behaviour before issue 19), and each cache alone; per-stage seconds in the notes.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from dalle2_fast.bench.core import Case, Variant
from dalle2_fast.eval.solver_steps import stage_options

FAMILY = "caches"
NO_ROOFLINE = "whole sampling calls with and without caches, and peers timed in child processes: ratios, not a fixed amount of work"
ROOT = Path(__file__).resolve().parents[2]
STEP_CALLS = 8
# the shipped pipeline's steps before issue 19's fewer-steps change (unclip.json at commit 1328172)
BEFORE_DEFAULTS = dict(prior_steps=32, decoder_steps=25, upsampler_steps=8)
MATCHED = {"full": dict(width=256, depth=6, heads=4, text_len=77, steps=64, batch=16),
           "quick": dict(width=64, depth=2, heads=2, text_len=77, steps=8, batch=4)}


def _text(b: int, length: int, width: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < torch.linspace(4, length, b).round().long()[:, None]  # varied padding
    emb = torch.randn(b, dim, generator=g)
    return SimpleNamespace(tokens=torch.randn(b, length, width, generator=g), mask=mask,
                           embed=F.normalize(emb, dim=-1), raw_embed=emb)


def prior_flops(width: int, depth: int, prefix: int, trailing: int, steps: int, rows: int) -> float:
    """Useful FLOPs of a prefix-cached prior call: the prefix once, then ``trailing`` tokens per
    step against prefix + trailing keys (projections 24 w^2 per token per layer: qkv, out, 4x MLP;
    attention 4 w per query-key pair)."""
    def run(tokens, keys):
        return depth * (24 * width**2 * tokens + 4 * width * tokens * keys)
    return float(rows * (run(prefix, prefix / 2) + steps * run(trailing, prefix + trailing)))


class PeerProcess:
    """A child process that runs one call per ``run`` line and answers ``done``; ended at exit."""

    def __init__(self, cmd: list[str], env: dict):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        atexit.register(self.close)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"peer {cmd[1]} did not start (exit code {self.proc.poll()})")

    def __call__(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "done":
            raise RuntimeError("peer failed during a call")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _dalle2_peer(m: dict) -> tuple[PeerProcess | None, str]:
    script = ROOT / "benchmarks" / "peers" / "dalle2_prior_child.py"
    if not script.is_file() or not (ROOT / "tests" / "_peers.py").is_file():
        return None, "needs a source checkout (benchmarks/peers, tests/_peers.py)"
    sys.path.insert(0, str(ROOT))
    try:
        from tests._peers import dalle2_pytorch_env
    finally:
        sys.path.remove(str(ROOT))
    paths, why = dalle2_pytorch_env("1.15.6")
    if paths is None:
        return None, why
    args = [m["width"], m["depth"], m["heads"], m["width"] // m["heads"], m["text_len"], m["batch"], m["steps"],
            torch.get_num_threads()]
    env = dict(os.environ, DALLE2_REF_PATHS=os.pathsep.join(paths))
    return PeerProcess([sys.executable, str(script), *map(str, args)], env), ""


def prior_matched_case(quick: bool) -> Case:
    from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
    from dalle2_fast.models.prior.laion import LaionDiffusionPrior, LaionPriorConfig

    m = MATCHED["quick" if quick else "full"]
    w, L, b, steps = m["width"], m["text_len"], m["batch"], m["steps"]
    torch.manual_seed(0)
    ours = DiffusionPrior(DiffusionPriorConfig(clip_dim=w, text_width=w, text_len=L, width=w, layers=m["depth"],
                                               heads=m["heads"], n_candidates=1)).eval()
    laion = LaionDiffusionPrior(LaionPriorConfig(dim=w, depth=m["depth"], heads=m["heads"], dim_head=w // m["heads"],
                                                 max_text_len=L, n_candidates=1)).eval()
    text, seeds = _text(b, L, w, w), list(range(b))
    run = lambda p, cache: p.sample(text, seeds, steps=steps, n_candidates=1, prefix_cache=cache)  # noqa: E731
    variants = [Variant("ours-prefix-cache", lambda: run(ours, True)),
                Variant("ours-uncached", lambda: run(ours, False), "baseline"),
                Variant("laion-prefix-cache", lambda: run(laion, True)),
                Variant("laion-uncached", lambda: run(laion, False), "baseline")]
    peer, why = _dalle2_peer(m)
    missing = {}
    if peer is None:
        missing["dalle2-pytorch"] = why
    else:
        variants.append(Variant("dalle2-pytorch", peer, "peer"))
    return Case(FAMILY, "prior-matched" + ("-quick" if quick else ""), dict(m, candidates=1, guidance=1.0),
                variants, "dalle2-pytorch" if peer is not None else "ours-uncached", missing=missing, items=b,
                flops=prior_flops(w, m["depth"], L + 1, 3, steps, b), warmup=0)


def karlo_setup(quick: bool) -> SimpleNamespace:
    """The ``prior-karlo-reduced`` case's pieces: ``ours`` (the imported prior), ``run(cache,
    model=ours)`` (our sampling call; ``model``: another prior of the same configuration, e.g. a
    compiled copy), ``diffusers_loop`` (the peer's), ``params``, ``batch``."""
    from diffusers import PriorTransformer, UnCLIPScheduler

    from dalle2_fast.bench.karlo_reference import SIZES, _randomize
    from dalle2_fast.models.prior import DiffusionPrior

    s = SIZES["quick" if quick else "full"]
    D, b, steps, g = s["clip_dim"], 4, 25 if not quick else 5, 4.0
    ref = _randomize(PriorTransformer(num_attention_heads=s["prior_heads"], attention_head_dim=s["prior_head_dim"],
                                      num_layers=s["prior_layers"], embedding_dim=D, num_embeddings=77,
                                      additional_embeddings=4), 1).eval()
    sched = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                            clip_sample=True, clip_sample_range=10.0)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(str(Path(tmp) / "prior"))
        sched.save_pretrained(str(Path(tmp) / "prior_scheduler"))
        ours = DiffusionPrior.from_diffusers(Path(tmp) / "prior").eval()
    text, null = _text(b, 77, D, D), _text(1, 77, D, D, seed=1)
    seeds = list(range(b))

    def diffusers_loop():  # UnCLIPPipeline's prior loop (CFG on the doubled batch, scheduler step)
        hs = torch.cat([null.tokens.expand(b, -1, -1), text.tokens])
        pe = torch.cat([null.raw_embed.expand(b, -1), text.raw_embed])
        mask = torch.cat([null.mask.expand(b, -1), text.mask])
        sched.set_timesteps(steps)
        ts = sched.timesteps
        x = torch.randn(b, D) * sched.init_noise_sigma
        for i, t in enumerate(ts):
            out = ref(torch.cat([x, x]), timestep=t, proj_embedding=pe, encoder_hidden_states=hs,
                      attention_mask=mask).predicted_image_embedding
            u, c = out.chunk(2)
            x = sched.step(u + g * (c - u), timestep=t, sample=x,
                           prev_timestep=None if i + 1 == len(ts) else ts[i + 1]).prev_sample
        return ref.post_process_latents(x)

    run = lambda cache, model=ours: model.sample(text, seeds, steps=steps, guidance=g,  # noqa: E731
                                                 n_candidates=1, null_text=null, prefix_cache=cache)
    params = dict(clip_dim=D, layers=s["prior_layers"], heads=s["prior_heads"], steps=steps, guidance=g, images=b)
    return SimpleNamespace(ours=ours, run=run, diffusers_loop=torch.no_grad()(diffusers_loop), params=params, batch=b)


def prior_karlo_case(quick: bool) -> Case:
    k = karlo_setup(quick)
    variants = [Variant("ours-prefix-cache", lambda: k.run(True)), Variant("ours-uncached", lambda: k.run(False)),
                Variant("diffusers", k.diffusers_loop, "peer")]
    return Case(FAMILY, "prior-karlo-reduced" + ("-quick" if quick else ""), k.params, variants, "diffusers",
                items=k.batch)


def ar_prior_case(quick: bool) -> Case:
    from dalle2_fast.models.prior import ARPriorConfig, AutoregressivePrior

    w, L, K, b = (64, 77, 8, 4) if quick else (256, 77, 32, 16)
    torch.manual_seed(0)
    p = AutoregressivePrior(ARPriorConfig(clip_dim=w, text_width=w, text_len=L, n_components=K, n_buckets=64,
                                          width=w, layers=2 if quick else 6, heads=4)).eval()
    z = F.normalize(torch.randn(2000, w), dim=-1)
    p.fit_quantizers(z, F.normalize(z + torch.randn_like(z), dim=-1))
    text, seeds = _text(b, L, w, w), list(range(b))
    run = lambda cache: p.sample(text, seeds, guidance=2.0, kv_cache=cache)  # noqa: E731
    return Case(FAMILY, "ar-prior" + ("-quick" if quick else ""), dict(width=w, text_len=L, codes=K, embeddings=b,
                                                                      guidance=2.0),
                [Variant("kv-cache", lambda: run(True)), Variant("uncached", lambda: run(False), "baseline")],
                "uncached", items=b)


def _prior_off(pipe) -> dict:
    return {"kv_cache": False} if hasattr(pipe.prior, "quantizer") else {"prefix_cache": False}


def decoder_step_case(pipe, quick: bool) -> Case:
    dec, n = pipe.decoder, 2 if quick else 4
    text = pipe.clip.encode_text(["a red circle above a blue square"] * n)
    z = F.normalize(torch.randn(n, dec.config.clip_dim), dim=-1)
    kw = dec._kwargs(z, *dec._text(text))
    s = dec.image_size
    x, t = torch.randn(n, 3, s, s), torch.full((n,), 500)
    calls = {}
    for cache in (True, False):
        den, kwc = dec._denoiser(3.0, kw, None, cache)

        @torch.no_grad()
        def steps(den=den, kwc=kwc):  # STEP_CALLS calls per timing: a short call is noisy on a shared machine
            for _ in range(STEP_CALLS):
                den(x, t, **kwc)
        calls[cache] = steps
    return Case(FAMILY, "decoder-step" + ("-quick" if quick else ""),
                dict(images=n, guidance=3.0, size=s, calls_per_timing=STEP_CALLS),
                [Variant("context-cache", calls[True]), Variant("uncached", calls[False], "baseline")], "uncached")


def pipeline_case(pipe, kind: str, quick: bool) -> Case:
    from dalle2_fast.bench.unclip import PROMPTS, stage_clock

    n = 2 if quick else 4
    off_p, off_d = _prior_off(pipe), {"context_cache": False}
    levers = {"caches": ({}, {}), "prior-cache-only": ({}, off_d), "decoder-cache-only": (off_p, {}),
              "no-caches": (off_p, off_d), "caches+fewer-steps": ({}, {})}
    # the cache levers at the steps shipped before issue 19; the last variant at today's defaults
    before = dict(prior_steps=8, decoder_steps=5, upsampler_steps=3) if quick else BEFORE_DEFAULTS
    steps_of = {k: ({} if k == "caches+fewer-steps" and not quick else before) for k in levers}

    stage_times: dict[str, dict[str, list[float]]] = {k: {} for k in levers}

    def run(label):  # per-stage seconds of every timed call, from the stages' own sample calls
        clock: dict[str, float] = {}
        with stage_options(pipe, *levers[label]), stage_clock(pipe, clock), torch.no_grad():
            pipe(PROMPTS[:n], seed=0, batch_size=n, **steps_of[label])
        for k, v in clock.items():
            stage_times[label].setdefault(k, []).append(v)

    def notes():
        return {label: {f"{k}_s": f"{statistics.median(v):.3f}" for k, v in st.items()}
                for label, st in stage_times.items()}

    variants = [Variant(k, functools.partial(run, k), "baseline" if k == "no-caches" else "ours") for k in levers]
    return Case(FAMILY, f"pipeline-{kind}-{n}img" + ("-quick" if quick else ""),
                dict(images=n, weights=kind, before=before, now=dict(pipe.defaults)),
                variants, "no-caches", items=n, notes=notes, warmup=0)


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    from dalle2_fast.bench.unclip import load_pipeline

    out = [prior_matched_case(quick)]
    try:
        out.append(prior_karlo_case(quick))
    except ImportError as e:  # diffusers absent: the case needs its PriorTransformer
        print(f"caches: prior-karlo-reduced skipped ({e})")
    out.append(ar_prior_case(quick))
    pipe, kind = load_pipeline(device)
    return out + [decoder_step_case(pipe, quick), pipeline_case(pipe, kind, quick)]


def op_profile(pipe, n: int = 4, top: int = 15) -> str:
    """Where the time of one shipped-pipeline call (all caches, default quality) goes, per op:
    torch.profiler's table of self CPU time, the ``top`` ops."""
    from torch.profiler import ProfilerActivity, profile

    from dalle2_fast.bench.unclip import PROMPTS

    with torch.no_grad():
        pipe(PROMPTS[:n], seed=0, batch_size=n)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe(PROMPTS[:n], seed=0, batch_size=n)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def plot_speedups(results_json: Path, out: Path) -> Path:
    """One horizontal bar per variant of each case: its speed-up over the case's uncached path
    (ours-uncached for the priors, the variant marked baseline elsewhere), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(results_json).read_text())
    rows, m = data["results"], data.get("machine", {})
    where = f"{m.get('cpu_model', 'CPU')}, {m.get('cpu_count', '?')} cores, {m.get('torch_threads', '?')} thread(s)"
    labels, values, colours = [], [], []
    for r in rows:
        base = "ours-uncached" if "ours-uncached" in r["times"] else r["baseline"]
        for label, t in r["times"].items():
            labels.append(f"{r['name']}: {label}")
            values.append(r["times"][base] / t)
            colours.append({"peer": "tab:red", "baseline": "tab:grey"}.get(r["kinds"][label], "tab:blue"))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color=colours)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("speed-up over the case's uncached path (blue: ours, red: peers, grey: baselines)")
    ax.set_title(f"issue 19 caches, one run ({where})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compile_times(pipe, n: int = 4, **options) -> dict[str, float]:
    """Seconds of one shipped-pipeline call (default quality) eager, then after
    :meth:`UnCLIPPipeline.compile` its first call (compilation included) and its second."""
    from dalle2_fast.bench.unclip import PROMPTS

    def call():
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(PROMPTS[:n], seed=0, batch_size=n)
        return time.perf_counter() - t0

    call()  # warm-up
    out = {"eager_s": call()}
    pipe.compile(**options)
    out["compiled_first_call_s"] = call()
    out["compiled_s"] = call()
    return out


if __name__ == "__main__":  # python -m dalle2_fast.bench.caches OUT.txt [--compile]: per-op table / compile times
    from dalle2_fast.bench.unclip import load_pipeline

    if "--compile" in sys.argv:
        res = compile_times(load_pipeline()[0])
        Path(sys.argv[1]).write_text(json.dumps(res, indent=2))
        print(res)
    else:
        table = op_profile(load_pipeline()[0])
        Path(sys.argv[1]).write_text(table)
        print(table)
