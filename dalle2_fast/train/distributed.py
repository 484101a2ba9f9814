"""torchrun support for the training loop and sampling, on ``torch.distributed`` only.

Under ``torchrun --nproc-per-node N -m dalle2_fast.cli train ...`` (``WORLD_SIZE`` > 1 in the
environment) :func:`setup` joins the process group (nccl when CUDA is available, else gloo),
each rank trains a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper on its disjoint
slice of the global batch (rank r of W takes items ``k*B + r*B/W .. k*B + (r+1)*B/W - 1`` of
step k, so the union over ranks is exactly the single-process batch), every per-item random
draw comes from the item's own seeds (:class:`~dalle2_fast.seeding.ItemSeeds`, a function of the
run seed and the item's global index), batch norm layers use global-batch statistics, the
logged numbers are averaged over ranks, and only rank 0 writes files. The VQ layers all-reduce
their EMA statistics themselves. Without ``WORLD_SIZE`` everything here is a no-op."""
from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist

from dalle2_fast.seeding import ItemSeeds

class _MethodModule(torch.nn.Module):
    """``forward`` = ``model.<method>``, so DDP can hook a loss computed by a named method."""

    def __init__(self, model: torch.nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *a, **k):
        return getattr(self.model, self.method)(*a, **k)


class DDPView:
    """Looks like ``model`` to a task's ``step``, except that the attributes named in ``parts``
    (submodules, or a method) are their DDP wrappers, and calling the view calls ``parts['forward']``
    when forward is wrapped. Every other attribute (config, parameters(), train(), ...) is the
    model's own."""

    def __init__(self, model: torch.nn.Module, parts: dict):
        self.__dict__.update(_model=model, _parts=parts)

    def __getattr__(self, name):
        parts = self.__dict__["_parts"]
        return parts[name] if name in parts else getattr(self.__dict__["_model"], name)

    def __call__(self, *a, **k):
        return self._parts.get("forward", self._model)(*a, **k)


class _SyncBatchNormFn(torch.autograd.Function):
    """Batch norm over the global batch: per-channel sums all-reduced in the forward pass and the
    two gradient sums all-reduced in the backward pass (the same algorithm as
    ``torch.nn.SyncBatchNorm``, whose kernels are CUDA-only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0, *range(2, x.dim())]
        view = (1, -1) + (1,) * (x.dim() - 2)
        s = torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])])
        dist.all_reduce(s)
        n = s[-1].clone()
        mean = s[:-1] / n
        xc = x - mean.view(view)
        var = (xc * xc).sum(dims)
        dist.all_reduce(var)
        var = var / n  # biased, as batch norm normalises with
        invstd = torch.rsqrt(var + eps)
        xhat = xc * invstd.view(view)
        y = xhat * weight.view(view) + bias.view(view) if weight is not None else xhat
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n, ctx.view, ctx.dims = n, view, dims
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, gy, *_):
        xhat, invstd, weight = ctx.saved_tensors
        view, dims = ctx.view, ctx.dims
        g = torch.stack([gy.sum(dims), (gy * xhat).sum(dims)])  # d bias, d weight (this rank's part)
        gb, gw = g.clone()
        dist.all_reduce(g)  # every rank, whether or not it needs the input gradient
        scale = invstd if weight is None else invstd * weight
        gx = scale.view(view) * (gy - (g[0] / ctx.n).view(view) - xhat * (g[1] / ctx.n).view(view))
        return gx, (gw if weight is not None else None), (gb if weight is not None else None), None


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """A batch norm layer whose training statistics are those of the global batch under a process
    group of several ranks (any device, gloo included); otherwise plain batch norm. Made by
    :func:`sync_batchnorm` from an existing layer, keeping its parameters and buffers."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        y, mean, var, n = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), f)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), f)  # unbiased
        return y


def sync_batchnorm(model: torch.nn.Module, info: "DistInfo") -> torch.nn.Module:
    """Make ``model``'s batch norm layers normalise with global-batch statistics (what one process
    on the whole batch computes): ``torch.nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm` on
    the CPU (gloo). In place for a model that is not itself a batch norm layer."""
    if info.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, SyncBatchNorm):
            m.__class__ = SyncBatchNorm  # same parameters, buffers and state-dict keys
    return model


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); a single process (no ``WORLD_SIZE``) gets ``DistInfo()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(info: DistInfo, batch_size: int) -> int:
    """The per-rank share of ``--batch-size``; it must divide evenly."""
    if batch_size % info.world:
        raise ValueError(f"--batch-size: {batch_size} does not split over {info.world} ranks; "
                         f"expected a multiple of the world size {info.world}")
    return batch_size // info.world


def shard_batch(data, info: DistInfo, step: int, batch_size: int, seed: int) -> dict:
    """Rank ``info.rank``'s slice of the global batch of ``step``, on the rank's device (one
    process: the whole batch). ``batch['seeds']`` is the slice's :class:`ItemSeeds`: everything a
    step draws at random per item comes from it, so the ranks together draw exactly what one
    process draws for the whole batch."""
    b = local_batch_size(info, batch_size)
    start = step * batch_size + info.rank * b
    batch = data.batch(start, b)
    if info.device.type != "cpu":
        batch = {k: v.to(info.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["seeds"] = ItemSeeds(seed, start, b)
    return batch


def wrap_model(model: torch.nn.Module, info: DistInfo, parts=("forward",), name: str = "model"):
    """What a task's ``step`` gets: the model itself in one process; under torchrun the model on
    the rank's device, its batch norm layers synchronised, and a :class:`DDPView` whose parts are
    DDP-wrapped (parameters broadcast from rank 0). ``parts`` says how the task's step reaches its
    trainable networks, i.e. what DDP must wrap so that backward all-reduces the gradients:
    'forward' (the step calls ``model(...)``), a method name (``model.loss(...)``: DDP over a module
    whose forward is that method), or submodule names (``model.generator(...)``, one DDP each)."""
    if not info.enabled:
        return model
    model = sync_batchnorm(model.to(info.device), info)
    ids = [info.device.index] if info.device.type == "cuda" else None

    def ddp(m):
        return torch.nn.parallel.DistributedDataParallel(m, device_ids=ids)

    wrapped = {}
    for part in parts:
        if part == "forward":
            wrapped["forward"] = ddp(model)
            continue
        attr = getattr(model, part, None)
        if isinstance(attr, torch.nn.Module):
            wrapped[part] = ddp(attr)
        elif callable(attr):
            wrapped[part] = ddp(_MethodModule(model, part))
        else:
            raise ValueError(f"train {name}: ddp part {part!r} is neither a submodule nor a method of "
                             f"{type(model).__name__}")
    return DDPView(model, wrapped)


def no_sync(module):
    """``module.no_sync()`` for a DDP module (its gradients from the enclosed forward/backward are
    kept local, not all-reduced), a no-op context otherwise."""
    ddp = isinstance(module, torch.nn.parallel.DistributedDataParallel)
    return module.no_sync() if ddp else contextlib.nullcontext()


def reduce_logs(logs: dict, info: DistInfo) -> dict:
    """Average the logged scalars over ranks (equal shards: the mean of per-rank batch means is
    the global-batch mean)."""
    if not info.enabled or not logs:
        return logs
    keys = list(logs)
    t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ItemDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose mask for item i of the batch comes from its own generator (seeded
    ``seeds[i]`` while :func:`item_dropout` is active), so it does not depend on which rank or
    batch slice computes the item; a plain ``nn.Dropout`` otherwise. Each layer's mask is a
    function of (item seed, layer) only, so an activation-checkpointing recompute in the backward
    pass redraws the same mask."""

    seeds: list[int] | None = None

    def forward(self, x):
        if not self.training or self.p == 0 or self.seeds is None:
            return super().forward(x)
        if len(self.seeds) != x.shape[0]:
            raise ValueError(f"ItemDropout: {len(self.seeds)} item seeds for a batch of {x.shape[0]}")
        u = torch.empty(x.shape, device=x.device)  # float32 uniforms: row i from item i's generator
        for row, s in zip(u, self.seeds):
            row.uniform_(generator=torch.Generator(device=x.device).manual_seed(s))
        return x * u.ge_(self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))  # keep with prob 1-p, rescale


@contextlib.contextmanager
def item_dropout(model, seeds: ItemSeeds):
    """Within the block (forward and backward), every dropout layer of ``model`` draws item i's
    mask from ``seeds``: layer j of the model uses ``seeds(f"dropout/{j}")``. Plain
    ``nn.Dropout`` layers become :class:`ItemDropout` (no parameters or buffers: checkpoints are
    unchanged)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    for j, m in enumerate(layers):
        if type(m) is torch.nn.Dropout:
            m.__class__ = ItemDropout
        m.seeds = seeds(f"dropout/{j}")
    try:
        yield
    finally:
        for m in layers:
            m.seeds = None
