"""``dalle2-fast serve``: the unCLIP pipeline behind OpenAI's Images API, with dynamic batching and
a web page (``dalle2_fast.serve``).

    dalle2-fast serve [--pipeline DIR] [--host 127.0.0.1] [--port 8000] [--max-batch 8]
    # then: a browser at http://127.0.0.1:8000/, or the openai client:
    #   OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").images.generate(prompt=..., n=4)

Binds to the loopback address unless --host says otherwise; requests name no files; ``n``,
steps, prompt length and the queue are capped by the flags below.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dalle2_fast.cli.checks import check_count, check_finite


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="an HTTP service (OpenAI Images API + web page) with dynamic batching",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--pipeline", default=None, help="a pipeline directory (default: the weights shipped)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=8, help="images per forward pass (8)")
    s.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a batch waits to fill (20 ms)")
    s.add_argument("--max-queue", type=int, default=256, help="images waiting before requests get 429 (256)")
    s.add_argument("--max-n", type=int, default=10, help="images per request (10)")
    s.add_argument("--max-steps", type=int, default=250, help="steps per stage a request may ask for (250)")
    s.add_argument("--max-prompt-chars", type=int, default=1000, help="longest prompt (1000)")
    s.add_argument("--url-cache", type=int, default=256, help="images kept for response_format=url (256)")
    s.add_argument("--exact-batch-shape", action="store_true",
                   help="run short batches at their own size instead of padding to --max-batch: faster when "
                        "lightly loaded, but an image's bytes may then depend on its batch (see docs/serving.md)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=run)


def run(args) -> int:
    from dalle2_fast.serve.config import ServeConfig

    for flag, v in (("--port", args.port), ("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                    ("--max-n", args.max_n), ("--max-steps", args.max_steps),
                    ("--max-prompt-chars", args.max_prompt_chars)):
        check_count(flag, v, 0 if flag == "--port" else 1)
    check_count("--url-cache", args.url_cache, 0)
    check_finite("--max-wait-ms", args.max_wait_ms, 0, 60_000)
    if args.threads is not None:
        check_count("--threads", args.threads)
    if args.pipeline is not None and not Path(args.pipeline).is_dir():
        raise FileNotFoundError(f"--pipeline: no such directory {args.pipeline!r}")
    cfg = ServeConfig(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                      max_queue=args.max_queue, max_n=args.max_n, max_steps=args.max_steps,
                      max_prompt_chars=args.max_prompt_chars, url_cache=args.url_cache,
                      fixed_batch_shape=not args.exact_batch_shape)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"serve: needs starlette, uvicorn and python-multipart ({e}); pip install dalle2_fast "
                         "installs them") from None
    import torch

    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.serve.server import serve

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe = UnCLIPPipeline.from_pretrained(args.pipeline, device=args.device)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serve: listening on {cfg.host}, reachable from other machines; there is no authentication")
    print(f"serving {args.pipeline or 'the shipped pipeline'} at http://{cfg.host}:{cfg.port}/ "
          f"(API: /v1/images/generations, /v1/images/variations, /v1/images/edits; health: /health)", flush=True)
    serve(pipe, cfg, args.log_level)
    return 0


__all__ = ["add_parsers", "run"]
