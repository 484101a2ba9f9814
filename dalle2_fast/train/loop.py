"""The training loop shared by every model: deterministic data order (batch k = items
k*B..k*B+B-1 of the seeded dataset), tqdm progress, a loss CSV, training-state checkpoints for
exact ``--resume``, an optional exponential moving average of the weights (``--ema``), and at
the end: final weights (the EMA when there is one), loss-curve PNG, sample grid PNG, metrics."""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dalle2_fast.checkpoint import atomic_write_text, load_latest_training_state, save_training_state
from dalle2_fast.data import ImageFolderDataset, ShapesDataset
from dalle2_fast.train import distributed as D
from dalle2_fast.train.plots import plot_losses, save_grid
from dalle2_fast.train.signals import StopRequest
from dalle2_fast.train.tasks import TASKS

HELDOUT_SEED_OFFSET = 1_000_003  # held-out images come from a different seed than training


def make_datasets(data: str, resolution: int, seed: int, eval_size: int):
    if data == "shapes":
        return (ShapesDataset(resolution, seed=seed),
                ShapesDataset(resolution, seed=seed + HELDOUT_SEED_OFFSET, size=eval_size))
    folder = ImageFolderDataset(data, resolution)
    return folder, folder


def _read_rows(path: Path, upto: int) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), [row for row in r if int(row["step"]) <= upto]


def ema_decay(args: argparse.Namespace, task) -> float:
    """``--ema`` if given, else the task's default (0: no EMA)."""
    decay = getattr(args, "ema", None)
    decay = float(getattr(task, "default_ema", 0.0) if decay is None else decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"--ema: expected a decay in [0, 1) (0: off), got {decay}")
    return decay


def ema_update(decay: float):
    """The ``multi_avg_fn`` of the weight EMA: torch's ``get_ema_multi_avg_fn`` with the decay
    warmed up by the number of updates so far, ``min(decay, (1 + n) / (10 + n))`` (the schedule of
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``). Without the warm-up a 0.999 EMA
    of a 200-step CPU run would still be 80% the weights after step 1; with it the EMA averages
    over roughly the last tenth of the run until ``decay`` caps it (after ~9/(1-decay) steps)."""
    def update(ema_params, params, n):
        n = float(n)  # updates so far (>= 1: the first update copies the weights)
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(ema_params, params, n)
    return update


def train(args: argparse.Namespace) -> Path:
    """Train ``args.model``; returns the output directory. ``args``: the ``train`` subcommand's
    namespace (model, steps, batch_size, resolution, lr, seed, out, resume, ckpt_every,
    keep_last, max_minutes, data, eval_size, sample_n, set, vqvae, quiet, ema).

    With an EMA decay > 0 (``--ema``; default: the task's ``default_ema``) rank 0 keeps
    ``AveragedModel(model)`` updated after every optimizer step (decay warmed up by
    :func:`ema_update`); it is saved in every training
    checkpoint (``ema.safetensors``), written as ``final/`` and used for the end-of-training
    samples and metrics, while ``final_raw/`` holds the raw weights."""
    if args.model not in TASKS:
        raise ValueError(f"train: unknown model {args.model!r}; choose from {sorted(TASKS)}")
    task = TASKS[args.model]
    info = D.setup()
    D.local_batch_size(info, args.batch_size)
    torch.manual_seed(args.seed)
    out = Path(args.out or f"runs/{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    data, held_ds = make_datasets(args.data, args.resolution, args.seed, args.eval_size)
    model = task.build(args)
    lr = args.lr if args.lr is not None else task.default_lr
    step_model = D.wrap_model(model, info, args.model)  # DDP under torchrun, else the model itself
    opts = task.optimizers(model, lr)
    decay = ema_decay(args, task)
    # the EMA is updated from weights that are identical on every rank: rank 0's copy is the only one
    ema = AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True) if decay > 0 and info.is_main else None
    start = 0
    if args.resume:
        found = load_latest_training_state(out, model, opts, ema=ema)  # skips unreadable newer ones, warning
        if found is None:
            raise FileNotFoundError(f"--resume: no training checkpoint under {out / 'checkpoints'}")
        _, state = found
        start = state["step"]
        if state["data_position"] != start * args.batch_size:
            raise ValueError(f"--resume: checkpoint was written with batch size "
                             f"{state['data_position'] // max(start, 1)}, not {args.batch_size}")
        if float(state["extra"].get("ema", 0.0)) != decay:
            raise ValueError(f"--resume: checkpoint was written with --ema {state['extra'].get('ema', 0.0)}, "
                             f"not {decay}")
    cfg = {k: v for k, v in vars(args).items() if k != "func"}
    if info.is_main:
        atomic_write_text(out / "train_config.json", json.dumps(dict(cfg, lr=lr, ema=decay), indent=2, default=str))

    csv_path = out / "loss.csv"
    fields, rows = _read_rows(csv_path, start) if args.resume else ([], [])
    f = open(csv_path if info.is_main else os.devnull, "w", newline="")
    writer = None
    if fields:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.model, disable=args.quiet)
    step = start - 1
    stop = StopRequest().__enter__()
    for step in bar:
        batch = D.shard_batch(data, info, step, args.batch_size, args.seed)  # one process: the whole batch
        logs = D.reduce_logs(task.step(step_model, batch, opts), info)
        if ema is not None:
            ema.update_parameters(model)
        if writer is None:
            writer = csv.DictWriter(f, fieldnames=["step", *logs])
            writer.writeheader()
        writer.writerow({"step": step + 1, **{k: f"{v:.6g}" for k, v in logs.items()}})
        if (step + 1) % 10 == 0:
            f.flush()
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
        out_of_time = D.any_rank(args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes
                                 or stop.signum is not None, info)
        if ((step + 1) % args.ckpt_every == 0 or step + 1 == args.steps or out_of_time) and info.is_main:
            f.flush()  # the loss rows up to a checkpoint survive a SIGKILL after it
            save_training_state(out, step + 1, model, opts, (step + 1) * args.batch_size, extra={"ema": decay},
                                keep_last=args.keep_last, ema=ema)
        if out_of_time:  # stop here (time limit or SIGTERM/SIGINT); --resume continues towards --steps
            break
    stop.__exit__()
    f.close()
    D.barrier(info)
    if stop.signum is not None or not info.is_main:
        D.teardown(info)
        if stop.signum is not None:
            print(f"train: signal {stop.signum} received; checkpoint written at step {step + 1}, exiting", flush=True)
            raise SystemExit(stop.exit_code)
        return out
    model = model.cpu() if info.enabled else model
    D.teardown(info)
    train_s = time.time() - t0

    if ema is not None:  # final/ = the EMA weights (what sampling uses); final_raw/ = the raw ones
        model.save_pretrained(out / "final_raw")
        model = ema.module.cpu()
    model.save_pretrained(out / "final")
    plot_losses(csv_path, out / "loss.png")
    gen = torch.Generator().manual_seed(args.seed)
    held = held_ds.batch(0, args.eval_size)
    save_grid(task.picture(model, held, args.sample_n, gen), out / "samples.png", scale=2)
    metrics = {"model": args.model, "steps": step + 1, "train_seconds_this_run": round(train_s, 1), "ema": decay,
               **task.evaluate(model, held, torch.Generator().manual_seed(args.seed + 1))}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    if not args.quiet:
        print(json.dumps(metrics, indent=2))
    return out
