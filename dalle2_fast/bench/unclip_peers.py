"""Family ``unclip-peers``: the same Karlo-architecture weights in our pipeline and in diffusers'
``UnCLIPPipeline``, timed interleaved in one run, float32 and bfloat16.

The architecture is Karlo v1 alpha's (diffusers' conversion script configs: CLIP text
transformer + projection; PriorTransformer with a query token; a UNet2DConditionModel with
ResnetDownsample / SimpleCrossAttn blocks, 3 res blocks per level, attention at 32/16/8 px,
64 px output, CLIP-embedding conditioning through UnCLIPTextProjModel; two UNet2DModel
super-resolution networks 64 -> 256 without attention, the second for the last step), at a
reduced width so that a call runs in seconds on a 2-core CPU (:data:`SIZES`; Karlo's own widths
in parentheses there). Weights are random (sampling cost does not depend on them), the same in
both: built once in diffusers' layout, saved, and loaded by ``UnCLIPPipeline.from_diffusers``.
Both use classifier-free guidance in the prior and the decoder (diffusers' defaults 4 and 8),
the same prompts, steps and latents shape.

Per stage: our stages' ``sample`` calls, diffusers' denoising loops (the time between the first
and the last step of each ``progress_bar``); peak memory per variant with ``--memory`` (fresh
process, peak RSS growth of one call) and per stage from :func:`stage_peaks` (in-process).
bfloat16: ours loads the weights in bfloat16 and samples under autocast (sampler state float32);
diffusers runs ``pipe.to(torch.bfloat16)``, with its one bicubic upsampling computed in float32
(as shipped it raises on the CPU: no bfloat16 kernel for antialiased bicubic interpolation).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from dalle2_fast.bench.core import Case, Variant
from dalle2_fast.bench.karlo_reference import SIZES, build_reference

FAMILY = "unclip-peers"
NO_ROOFLINE = "a ratio against diffusers on the CPU at reduced Karlo widths; the unclip family carries the pipeline's roofline"
PROMPTS = ["a photograph of an astronaut riding a horse", "a red cube on a wooden table",
           "an oil painting of a harbour at dusk", "two cats asleep on a sofa"]
STEPS = {"full": dict(prior_steps=10, decoder_steps=8, upsampler_steps=3),
         "quick": dict(prior_steps=3, decoder_steps=3, upsampler_steps=2)}


class StageClock:
    """Seconds per stage of one call: ours by wrapping each stage's ``sample``; diffusers' by timing
    each denoising loop from its ``progress_bar`` (first step to last)."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def ours(self, pipe):
        stages = [("prior", pipe.prior), ("decoder", pipe.decoder)] + [(f"upsampler{i + 1}", u)
                                                                       for i, u in enumerate(pipe.upsamplers)]
        for name, mod in stages:
            orig = mod.sample

            def timed(*a, _orig=orig, _name=name, **k):
                t0 = time.perf_counter()
                out = _orig(*a, **k)
                self.times[_name] = self.times.get(_name, 0.0) + time.perf_counter() - t0
                return out

            mod.__dict__["sample"] = timed
        try:
            yield self
        finally:
            for _, mod in stages:
                mod.__dict__.pop("sample", None)

    @contextlib.contextmanager
    def diffusers(self, pipe):
        names = iter(["prior", "decoder", "upsampler1"])
        orig = pipe.progress_bar

        def bar(iterable=None, **kw):
            name = next(names)

            def gen():
                t0 = time.perf_counter()
                yield from iterable
                self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

            return gen()

        pipe.progress_bar = bar
        try:
            yield self
        finally:
            pipe.progress_bar = orig


class _Float32Interpolate:
    """torch.nn.functional with ``interpolate`` computed in float32: diffusers' UnCLIPPipeline calls
    ``F.interpolate(bicubic, antialias=True)``, which has no bfloat16 CPU kernel (it raises), so its
    bfloat16 run needs this one shim (the only change made to the peer)."""

    def __getattr__(self, name):
        import torch.nn.functional as F

        return getattr(F, name)

    @staticmethod
    def interpolate(x, *a, **k):
        import torch.nn.functional as F

        return F.interpolate(x.float(), *a, **k).to(x.dtype)


@contextlib.contextmanager
def _bf16_shim(pipe):
    import diffusers.pipelines.deprecated.unclip.pipeline_unclip as mod

    if next(pipe.decoder.parameters()).dtype == torch.float32:
        yield
        return
    saved = mod.F
    mod.F = _Float32Interpolate()
    try:
        yield
    finally:
        mod.F = saved


def _diffusers_call(pipe, prompts, steps):
    with _bf16_shim(pipe):
        return pipe(prompts, prior_num_inference_steps=steps["prior_steps"],
                    decoder_num_inference_steps=steps["decoder_steps"],
                    super_res_num_inference_steps=steps["upsampler_steps"], output_type="np").images


_CACHE: dict = {}
# label -> (pipeline key, 'ours' | 'diffusers'); the cases pair each dtype's variants
VARIANTS = {"ours": ("ours", "ours"), "ours-channels-last": ("ours_cl", "ours"),
            "ours-winograd-channels-last": ("ours_wg_cl", "ours"), "diffusers": ("ref", "diffusers"),
            "ours-bf16": ("ours16", "ours"), "ours-bf16-channels-last": ("ours16_cl", "ours"),
            "diffusers-bf16": ("ref16", "diffusers")}
CASES = {"fp32": ("ours", "ours-channels-last", "ours-winograd-channels-last", "diffusers"),
         "bf16": ("ours-bf16", "ours-bf16-channels-last", "diffusers-bf16")}
BASELINE = {"fp32": "diffusers", "bf16": "diffusers-bf16"}


def pipelines(quick: bool = False) -> dict:
    """Every variant's pipeline, the same random weights, built once per process."""
    key = bool(quick)
    if key not in _CACHE:
        import copy

        from dalle2_fast.pipeline import UnCLIPPipeline

        folder = Path(tempfile.mkdtemp(prefix="unclip-peers-"))
        ref = build_reference(folder, quick)
        _CACHE[key] = {
            "ours": UnCLIPPipeline.from_diffusers(folder),
            "ours_cl": UnCLIPPipeline.from_diffusers(folder).channels_last(),
            "ours_wg_cl": UnCLIPPipeline.from_diffusers(folder).channels_last().fast_convs(),
            "ours16": UnCLIPPipeline.from_diffusers(folder, dtype=torch.bfloat16),
            "ours16_cl": UnCLIPPipeline.from_diffusers(folder, dtype=torch.bfloat16).channels_last(),
            "ref": ref,
            "ref16": copy.deepcopy(ref).to(dtype=torch.bfloat16),  # (diffusers cannot reload this deprecated pipeline)
        }
    return _CACHE[key]


def call(label: str, quick: bool = False, n: int = 2, clock: StageClock | None = None):
    """One timed unit of work of variant ``label``: ``n`` images, both CFG stages, all steps."""
    key, kind = VARIANTS[label]
    pipe = pipelines(quick)[key]
    steps = STEPS["quick" if quick else "full"]
    ctx = getattr(clock, kind)(pipe) if clock is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        if kind == "ours":
            return pipe(PROMPTS[:n], seed=0, batch_size=n, **steps)
        return _diffusers_call(pipe, PROMPTS[:n], steps)


STAGE_LOG: dict[str, list[dict]] = {}


def _timed(label: str, quick: bool):
    def fn():
        clock = StageClock()
        t0 = time.perf_counter()
        call(label, quick, clock=clock)
        clock.times["total"] = time.perf_counter() - t0
        STAGE_LOG.setdefault(label, []).append(clock.times)
    return fn


def _peak_reset() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


def stage_peaks(label: str, quick: bool = False) -> dict:
    """Peak RSS growth (MB) during each stage and the whole call of variant ``label``, after one
    warm-up call. Run in a fresh process per variant (``--stage-peaks LABEL``): the weights and the
    libraries are loaded before the measurement, so this is what sampling adds."""
    call(label, quick)
    peaks: dict[str, float] = {}
    key, kind = VARIANTS[label]
    pipe = pipelines(quick)[key]
    if kind == "ours":
        stages = [("prior", pipe.prior), ("decoder", pipe.decoder), ("upsampler1", pipe.upsamplers[0])]
        for name, mod in stages:
            orig = mod.sample

            def probe(*a, _orig=orig, _name=name, **k):
                base = _peak_reset()
                out = _orig(*a, **k)
                peaks[_name] = max(0.0, _status("VmHWM") - base)
                return out

            mod.__dict__["sample"] = probe
        try:
            base = _peak_reset()
            call(label, quick)
            peaks["total"] = max(0.0, _status("VmHWM") - base)
        finally:
            for _, mod in stages:
                mod.__dict__.pop("sample", None)
        return peaks
    names = iter(["prior", "decoder", "upsampler1"])
    orig_bar = pipe.progress_bar

    def bar(iterable=None, **kw):
        name = next(names)

        def gen():
            base = _peak_reset()
            yield from iterable
            peaks[name] = max(0.0, _status("VmHWM") - base)

        return gen()

    pipe.progress_bar = bar
    try:
        base = _peak_reset()
        call(label, quick)
        peaks["total"] = max(0.0, _status("VmHWM") - base)
    finally:
        pipe.progress_bar = orig_bar
    return peaks


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    if device != "cpu":
        return [Case(FAMILY, "karlo-reduced", {}, [], "diffusers", device=device,
                     missing={"all": "this family runs on the CPU (float32 and bfloat16)"})]
    try:
        pipelines(quick)
    except ImportError as e:  # diffusers / transformers not installed
        return [Case(FAMILY, "karlo-reduced", {}, [], "diffusers", missing={"diffusers": str(e)}, device=device)]
    params = dict(images=2, sizes=SIZES["quick" if quick else "full"], **STEPS["quick" if quick else "full"],
                  prior_guidance=4.0, decoder_guidance=8.0, threads=torch.get_num_threads())
    name = "karlo-reduced" + ("-quick" if quick else "")
    return [Case(FAMILY, f"{name}-{dt}", params,
                 [Variant(label, _timed(label, quick), "peer" if VARIANTS[label][1] == "diffusers" else "ours")
                  for label in labels], BASELINE[dt])
            for dt, labels in CASES.items()]


def report(out: Path, quick: bool = False, repeats: int = 3) -> dict:
    """The family's full report: interleaved totals (``core.run_case``), the median seconds per
    stage from the same runs, peak memory per stage (a fresh process per variant), written to
    ``out`` as results.json, results.md and unclip-peers.png."""
    import json
    import statistics
    import subprocess
    import sys

    from dalle2_fast.bench.cli import machine_info
    from dalle2_fast.bench.core import run_case

    STAGE_LOG.clear()
    load_start = os.getloadavg()[0]
    results = [run_case(c, repeats=repeats) for c in cases("cpu", quick)]
    load_end = os.getloadavg()[0]
    stages = {label: {k: statistics.median(r[k] for r in runs[1:] or runs) for k in runs[0]}
              for label, runs in STAGE_LOG.items()}  # runs[0] is the warm-up
    peaks = {}
    for label in VARIANTS:
        cmd = [sys.executable, "-m", "dalle2_fast.bench.unclip_peers", "--stage-peaks", label] + (
            ["--quick"] if quick else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[label] = json.loads(res.stdout.strip().splitlines()[-1])
    machine = dict(machine_info("cpu"), load_average_1min=[round(load_start, 2), round(load_end, 2)],
                   malloc=os.environ.get("DALLE2_FAST_MALLOC", "system"))
    doc = {"machine": machine, "quick": quick, "results": results, "stage_seconds": stages,
           "stage_peak_mb": peaks, "weights_mb": _weights_mb(quick)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "results.md").write_text(_markdown(doc))
    _plot(doc, out / "unclip-peers.png")
    return doc


def _weights_mb(quick: bool) -> dict:
    p = pipelines(quick)
    mb = lambda mods: sum(t.numel() * t.element_size() for m in mods for t in m.state_dict().values()) / 2**20  # noqa: E731
    out = {}
    for label, (key, kind) in VARIANTS.items():
        pipe = p[key]
        mods = ([pipe.clip, pipe.prior, pipe.decoder, *pipe.upsamplers] if kind == "ours" else
                [pipe.text_encoder, pipe.prior, pipe.text_proj, pipe.decoder, pipe.super_res_first, pipe.super_res_last])
        out[label] = mb(mods)
    return out


def _load(m: dict) -> str:
    """The 1-minute load average when the timed calls began and ended, as recorded (older results
    have none: nothing is claimed)."""
    la = m.get("load_average_1min")
    return "" if not la else f"; 1-minute load average {la[0]} when the timed calls began, {la[1]} when they ended"


def _markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# unclip-peers: Karlo architecture, ours vs diffusers' UnCLIPPipeline, same weights", "",
             f"Machine: {m.get('cpu_model') or m['processor']} ({m['cpu_count']} cores{_load(m)}), torch {m['torch']}, "
             f"{m['torch_threads']} thread(s), commit {m['git_commit'][:10]}, malloc policy "
             f"{m.get('malloc', 'system')} (both pipelines: one process).",
             "", "| case | variant | s / call (2 images) | images/s | vs diffusers | weights MB | peak +MB (call) |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        for label, t in r["times"].items():
            lines.append(f"| {r['name']} | {label} | {t:.2f} | {2 / t:.3f} | {r['ratios'][label]:.2f}x | "
                         f"{doc['weights_mb'][label]:.0f} | {doc['stage_peak_mb'][label]['total']:.0f} |")
    lines += ["", "Per stage (median seconds of the timed calls; peak RSS growth MB in a fresh process):", "",
              "| variant | prior s | decoder s | upsampler s | prior +MB | decoder +MB | upsampler +MB |",
              "|---|---|---|---|---|---|---|"]
    for label in VARIANTS:
        s, pk = doc["stage_seconds"].get(label, {}), doc["stage_peak_mb"].get(label, {})
        lines.append(f"| {label} | " + " | ".join(f"{s.get(k, float('nan')):.2f}" for k in
                                                   ("prior", "decoder", "upsampler1")) + " | "
                     + " | ".join(f"{pk.get(k, float('nan')):.0f}" for k in ("prior", "decoder", "upsampler1")) + " |")
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(VARIANTS)
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(labels)
    for stage in ("prior", "decoder", "upsampler1"):
        vals = [doc["stage_seconds"].get(lb, {}).get(stage, 0.0) for lb in labels]
        ax.bar(labels, vals, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds per call, 2 images (lower is better)")
    ax.set_title("Karlo architecture (reduced width), CPU: ours vs diffusers, per stage")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="unclip-peers: the full report (--out) or one variant's per-stage peaks")
    p.add_argument("--out", default=None, help="write results.json / results.md / unclip-peers.png here")
    p.add_argument("--stage-peaks", default=None, metavar="LABEL", choices=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--malloc", choices=["system", "retain"], default=None,
                   help="this process's (and the peak-memory children's) malloc policy, for both pipelines "
                        "(dalle2_fast/allocator.py; default: DALLE2_FAST_MALLOC, else glibc's own)")
    a = p.parse_args(argv)
    if a.malloc:
        os.environ["DALLE2_FAST_MALLOC"] = a.malloc  # the peak-memory children inherit it
    if os.environ.get("DALLE2_FAST_MALLOC") == "retain":
        from dalle2_fast.allocator import retain_freed_memory

        retain_freed_memory()
    torch.set_num_threads(1)
    if a.stage_peaks:
        print(json.dumps(stage_peaks(a.stage_peaks, a.quick)))
    if a.out:
        report(Path(a.out), a.quick, a.repeats)
        print((Path(a.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
