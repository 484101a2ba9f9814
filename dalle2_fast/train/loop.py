"""The one training loop of the package: every model of the suite, CLIP and every unCLIP stage
train here. A *task* (``dalle2_fast.recipes``) says what to train; the loop owns how:

- deterministic data order (batch k = items k*B .. k*B+B-1 of the task's dataset) with per-item
  random streams (``batch['seeds']``), sharded over ``torchrun`` ranks with DDP (``distributed``);
- an optional learning-rate schedule (``task.lr_factor(step, steps)``);
- an exponential moving average of the weights (``--ema``, warmed up by the update count);
- training-state checkpoints (atomic, last N kept) for exact ``--resume``, SIGTERM/SIGINT
  handling (save and exit), a wall-clock limit, tqdm progress and a loss CSV;
- at the end: ``final/`` (the EMA when there is one, ``final_raw/`` the raw weights), the loss
  curve, the task's picture and metrics.

A task provides: ``name``, ``default_lr``, ``default_ema``, ``ddp_parts`` (what DDP wraps: 'forward',
a method name such as 'loss', or submodule names), ``datasets(cfg) -> (train, held)`` (objects
with ``.batch(start, n) -> dict``; held may be None), ``build() -> model`` (a registered model),
``optimizers(model, lr) -> {name: optimizer}``, ``step(model, batch, optimizers) -> {log: float}``;
optionally ``lr_factor(step, steps)``, ``evaluate(model, held, generator) -> dict`` and
``picture(model, held, n, generator) -> images (B, C, H, W) in [-1, 1]``.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dalle2_fast.checkpoint import atomic_write_text, load_latest_training_state, save_training_state
from dalle2_fast.train import distributed as D
from dalle2_fast.train.plots import plot_losses, save_grid
from dalle2_fast.train.signals import StopRequest


@dataclass(frozen=True)
class TrainConfig:
    """What every run has, whatever the task (the command line's ``train`` options)."""

    out: str
    steps: int = 1000
    batch_size: int = 64
    lr: float | None = None          # None: the task's default
    seed: int = 0
    resume: bool = False
    resume_missing_ok: bool = False  # with resume: start from scratch when there is no checkpoint yet
    ckpt_every: int = 250
    keep_last: int = 2
    max_minutes: float | None = None
    eval_size: int = 256
    sample_n: int = 64
    ema: float | None = None         # None: the task's default; 0: off
    evaluate: bool = True            # the end-of-training picture and metrics
    quiet: bool = False


def _read_rows(path: Path, upto: int) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), [row for row in r if int(row["step"]) <= upto]


def ema_decay(cfg: TrainConfig, task) -> float:
    """``cfg.ema`` if given, else the task's default (0: no EMA)."""
    decay = float(getattr(task, "default_ema", 0.0) if cfg.ema is None else cfg.ema)
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


def _set_lr(opts: dict, factor: float) -> None:
    for o in opts.values():
        for g in o.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * factor


def train(task, cfg: TrainConfig) -> Path:
    """Train ``task`` as ``cfg`` says; returns the run directory (``cfg.out``)."""
    info = D.setup()
    D.local_batch_size(info, cfg.batch_size)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data, held_ds = task.datasets(cfg)
    model = task.build()
    lr = cfg.lr if cfg.lr is not None else task.default_lr
    step_model = D.wrap_model(model, info, getattr(task, "ddp_parts", ("forward",)), task.name)
    opts = task.optimizers(model, lr)
    decay = ema_decay(cfg, task)
    # the EMA is updated from weights that are identical on every rank: rank 0's copy is the only one
    ema = AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True) if decay > 0 and info.is_main else None
    start = 0
    if cfg.resume:
        found = load_latest_training_state(out, model, opts, ema=ema)  # skips unreadable newer ones, warning
        if found is not None:
            _, state = found
            start = state["step"]
            if state["data_position"] != start * cfg.batch_size:
                raise ValueError(f"--resume: checkpoint was written with batch size "
                                 f"{state['data_position'] // max(start, 1)}, not {cfg.batch_size}")
            if float(state["extra"].get("ema", 0.0)) != decay:
                raise ValueError(f"--resume: checkpoint was written with --ema {state['extra'].get('ema', 0.0)}, "
                                 f"not {decay}")
        elif not cfg.resume_missing_ok:
            raise FileNotFoundError(f"--resume: no training checkpoint under {out / 'checkpoints'}")
    if info.is_main:
        atomic_write_text(out / "train_config.json",
                          json.dumps({"task": task.name, **getattr(task, "describe", dict)(), **asdict(cfg),
                                      "lr": lr, "ema": decay}, indent=2, default=str))

    csv_path = out / "loss.csv"
    fields, rows = _read_rows(csv_path, start) if start else ([], [])
    f = open(csv_path if info.is_main else os.devnull, "w", newline="")
    writer = None
    if fields:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    t0 = time.time()
    lr_factor = getattr(task, "lr_factor", None)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=task.name, disable=cfg.quiet)
    step = start - 1
    stop = StopRequest().__enter__()
    for step in bar:
        if lr_factor is not None:
            _set_lr(opts, lr_factor(step, cfg.steps))
        batch = D.shard_batch(data, info, step, cfg.batch_size, cfg.seed)  # one process: the whole batch
        logs = task.step(step_model, batch, opts)
        bad = [k for k, v in logs.items() if not torch.isfinite(torch.tensor(float(v)))]
        if bad:
            raise FloatingPointError(f"train {task.name}: {bad} became non-finite at step {step} "
                                     f"({ {k: logs[k] for k in bad} }); lower --lr or check the data")
        logs = D.reduce_logs(logs, info)
        if ema is not None:
            ema.update_parameters(model)
        if writer is None:
            writer = csv.DictWriter(f, fieldnames=["step", *logs])
            writer.writeheader()
        writer.writerow({"step": step + 1, **{k: f"{v:.6g}" for k, v in logs.items()}})
        if (step + 1) % 10 == 0:
            f.flush()
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
        out_of_time = D.any_rank(cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes
                                 or stop.signum is not None, info)
        if ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps or out_of_time) and info.is_main:
            f.flush()  # the loss rows up to a checkpoint survive a SIGKILL after it
            save_training_state(out, step + 1, model, opts, (step + 1) * cfg.batch_size, extra={"ema": decay},
                                keep_last=cfg.keep_last, ema=ema)
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
    if csv_path.stat().st_size:
        plot_losses(csv_path, out / "loss.png")
    metrics = {"task": task.name, "steps": step + 1, "train_seconds_this_run": round(train_s, 1), "ema": decay}
    if cfg.evaluate:
        model.eval()
        held = held_ds.batch(0, cfg.eval_size) if held_ds is not None else None
        if hasattr(task, "picture"):
            gen = torch.Generator().manual_seed(cfg.seed)
            save_grid(task.picture(model, held, cfg.sample_n, gen), out / "samples.png", scale=2)
        if hasattr(task, "evaluate"):
            metrics.update(task.evaluate(model, held, torch.Generator().manual_seed(cfg.seed + 1)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    if not cfg.quiet:
        print(json.dumps(metrics, indent=2))
    return out


__all__ = ["TrainConfig", "train", "ema_decay", "ema_update"]
