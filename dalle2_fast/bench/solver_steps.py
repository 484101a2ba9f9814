"""``python -m dalle2_fast.bench.solver_steps PIPELINE_DIR --out result.json``: the fewer-steps
procedure of :mod:`dalle2_fast.eval.solver_steps` (decoder candidates by caption match and PSNR
against the pipeline's current setting on fixed seeds, upsampler candidates by PSNR), written
atomically as JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dalle2_fast.eval.solver_steps import DECODER_CANDIDATES, decoder_sweep, qualifying, upsampler_sweep
from dalle2_fast.pipeline import UnCLIPPipeline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dalle2_fast.bench.solver_steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", help="pipeline directory (unclip.json)")
    p.add_argument("--out", required=True, help="result JSON (written atomically)")
    p.add_argument("--n-per-prompt", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-upsamplers", action="store_true")
    p.add_argument("--decoder-candidates", default=None,
                   help='JSON list of settings, e.g. \'[{"sampler": "dpmpp", "steps": 10}]\' (default: '
                        'eval.solver_steps.DECODER_CANDIDATES)')
    a = p.parse_args(argv)
    if a.n_per_prompt < 1:
        p.error(f"--n-per-prompt must be >= 1, got {a.n_per_prompt}")
    cands = DECODER_CANDIDATES
    if a.decoder_candidates is not None:
        try:
            cands = json.loads(a.decoder_candidates)
        except json.JSONDecodeError as e:
            p.error(f"--decoder-candidates: not JSON ({e})")
        if not isinstance(cands, list) or not all(isinstance(c, dict) and "steps" in c for c in cands):
            p.error("--decoder-candidates: expected a JSON list of objects with 'steps' (and 'sampler', 'eta')")
    pipe = UnCLIPPipeline.from_pretrained(a.pipeline)
    res = {"decoder": decoder_sweep(pipe, cands, n_per_prompt=a.n_per_prompt, seed=a.seed)}
    res["decoder"]["qualifying"] = [c["setting"] for c in qualifying(res["decoder"])]
    if not a.skip_upsamplers:
        res["upsamplers"] = upsampler_sweep(pipe, seed=a.seed)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
