"""VectorQuantizer under torch.distributed (2 processes, gloo): EMA statistics are all-reduced,
so two ranks with half a batch each end with the codebook one process gets from the whole batch,
and dead-code revival keeps every rank's codebook identical."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dalle2_fast.nn import VectorQuantizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, init, revive, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different local RNG: revival must still agree
    vq = VectorQuantizer(8, 3, decay=0.7, dead_code_after=2 if revive else 0, channel_dim=-1)
    with torch.no_grad():
        vq.embedding.copy_(init)
        vq.embed_avg.copy_(init)
    shard = data.chunk(world)[rank]
    for _ in range(5):
        vq(shard)
    out[rank] = vq.embedding.clone()
    dist.destroy_process_group()


def _run(revive):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 3, generator=g)
    init = torch.randn(8, 3, generator=g)
    init[4:] += 50.0  # half the codes unused -> revival when enabled
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), data, init, revive, out), nprocs=2, join=True)
    return data, init, out


def test_ema_all_reduced_matches_single_process():
    data, init, out = _run(revive=False)
    vq = VectorQuantizer(8, 3, decay=0.7, dead_code_after=0, channel_dim=-1)
    with torch.no_grad():
        vq.embedding.copy_(init)
        vq.embed_avg.copy_(init)
    for _ in range(5):
        vq(data)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], vq.embedding, rtol=1e-5, atol=1e-5)


def test_revival_keeps_ranks_identical():
    _, init, out = _run(revive=True)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert (out[0][4:] - init[4:]).abs().max() > 1.0  # the far codes were revived
