"""``torchrun``-style training with 2 gloo processes: DDP on disjoint halves of each global batch
gives the loss curve and final weights of one process on the whole batch; only rank 0 writes."""
import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dalle2_fast.cli import main

TINY = ["--resolution", "16", "--batch-size", "4", "--eval-size", "4", "--sample-n", "2", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, argv):
    # what torchrun puts in the environment
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    main(argv)


def _torchrun(argv, world=2):
    mp.spawn(_rank, args=(world, _free_port(), argv), nprocs=world, join=True)


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_two_ranks_match_one_process(tmp_path):
    # VQ-VAE: gradients averaged by DDP, and the codebook's EMA statistics all-reduced inside the
    # layer (a codebook updated from half a batch would change the weights and the loss)
    model, sets = "vqvae", ["--set", "channels=8", "--set", "num_codes=16", "--set", "code_dim=4"]
    argv = ["train", model, "--steps", "3", "--ckpt-every", "2", *TINY, *sets]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    one, two = _rows(tmp_path / "one" / "loss.csv"), _rows(tmp_path / "two" / "loss.csv")
    assert [r["step"] for r in two] == ["1", "2", "3"]  # written once (rank 0), not twice
    for a, b in zip(one, two):
        for k in a:  # perplexity too: the VQ layer computes it from the all-reduced code counts
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), (k, a, b)
    wa = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


def test_batch_must_split_over_ranks(tmp_path):
    from dalle2_fast.train.distributed import DistInfo, local_batch_size
    with pytest.raises(ValueError, match="--batch-size: 5 does not split over 2 ranks"):
        local_batch_size(DistInfo(world=2), 5)


def test_vqvae2_prior_two_ranks_match_one_process(tmp_path):
    """The prior's loss is ``model.loss`` (not forward): DDP runs through a method wrapper; the
    frozen VQ-VAE-2 is not trained and the ranks' label/code shards rebuild the global batch."""
    vq = ["--set", "channels=8", "--set", "num_codes=16", "--set", "code_dim=4"]
    main(["train", "vqvae2", "--steps", "2", "--out", str(tmp_path / "vq"), *TINY, *vq])
    argv = ["train", "vqvae2-prior", "--steps", "2", "--ckpt-every", "2", *TINY, "--vqvae", str(tmp_path / "vq" / "final"),
            "--set", "channels=8", "--set", "n_layers=2", "--set", "attention_every=2"]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    one, two = _rows(tmp_path / "one" / "loss.csv"), _rows(tmp_path / "two" / "loss.csv")
    assert len(two) == 2
    for a, b in zip(one, two):
        for k in a:
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), (k, a, b)
    wa = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for k in wa:
        a, b = wa[k], wb[k]
        if k.endswith("qkv.bias"):
            # the key bias has an exactly-zero true gradient (softmax is shift invariant): its
            # gradient is float noise that Adam normalises to lr-sized steps, so compare q and v
            q, _, v = a.chunk(3)
            a = torch.cat([q, v])
            q, _, v = b.chunk(3)
            b = torch.cat([q, v])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
