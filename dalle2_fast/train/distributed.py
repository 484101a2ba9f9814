"""torchrun support for the training loop and sampling, on ``torch.distributed`` only.

Under ``torchrun --nproc-per-node N -m dalle2_fast.cli train ...`` (``WORLD_SIZE`` > 1 in the
environment) :func:`setup` joins the process group (nccl when CUDA is available, else gloo),
each rank trains a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper on its disjoint
slice of the global batch (rank r of W takes items ``k*B + r*B/W .. k*B + (r+1)*B/W - 1`` of
step k, so the union over ranks is exactly the single-process batch), the logged numbers are
averaged over ranks, and only rank 0 writes files. The VQ layers all-reduce their EMA
statistics themselves. Without ``WORLD_SIZE`` everything here is a no-op."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

# Tasks whose step goes through ``model(x)`` (what DDP hooks), or through one method that
# computes the whole loss (``DDP_METHODS``); the GAN (two networks, several forwards per
# backward) is not wrapped yet.
DDP_MODELS = ("ae", "dae", "vae", "vqvae", "vqvae2", "vqvae2-prior")
DDP_METHODS = {"vqvae2-prior": "loss"}


class _MethodModule(torch.nn.Module):
    """``forward`` = ``model.<method>``, so DDP can hook a loss computed by a named method."""

    def __init__(self, model: torch.nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *a, **k):
        return getattr(self.model, self.method)(*a, **k)


class _MethodDDP:
    """Looks like ``model`` to a task's ``step`` except that ``model.<method>(...)`` runs through
    DDP (gradient all-reduce); every other attribute is the model's own."""

    def __init__(self, model: torch.nn.Module, method: str, ddp: torch.nn.Module):
        self._model, self._method, self._ddp = model, method, ddp

    def __getattr__(self, name):
        return self._ddp if name == self._method else getattr(self._model, name)


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


def shard_batch(data, info: DistInfo, step: int, batch_size: int) -> dict:
    """Rank ``info.rank``'s slice of the global batch of ``step``, on the rank's device."""
    b = local_batch_size(info, batch_size)
    batch = data.batch(step * batch_size + info.rank * b, b)
    if info.device.type != "cpu":
        batch = {k: v.to(info.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def wrap_model(model: torch.nn.Module, info: DistInfo, model_name: str) -> torch.nn.Module:
    """``model`` moved to the rank's device and wrapped in DDP (parameters broadcast from rank 0)."""
    if not info.enabled:
        return model
    if model_name not in DDP_MODELS:
        raise NotImplementedError(f"train {model_name}: distributed training supports {list(DDP_MODELS)}; "
                                  f"got {model_name!r} with WORLD_SIZE={info.world} (run it on one process)")
    model.to(info.device)
    ids = [info.device.index] if info.device.type == "cuda" else None
    method = DDP_METHODS.get(model_name)
    if method is None:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    ddp = torch.nn.parallel.DistributedDataParallel(_MethodModule(model, method), device_ids=ids)
    return _MethodDDP(model, method, ddp)


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
