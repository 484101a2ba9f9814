"""Batch jobs of a suite checkpoint: 2 torchrun-style gloo ranks write every image exactly once,
the finished directory byte-identical to one process; a long run in batches keeps RSS flat."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dalle2_fast.cli import main
from dalle2_fast.models import GAN, GANConfig


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gan") / "final"
    GAN(GANConfig(resolution=16, g_width=8, d_width=8)).save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, argv):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    main(argv)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_two_ranks_write_each_image_once_identical_to_one_process(gan_ckpt, tmp_path):
    # n=11 with batch 3: 4 batches, the last one short; rank 0 takes batches 0, 2 and rank 1 takes 1, 3
    argv = ["sample", "--checkpoint", str(gan_ckpt), "-n", "11", "--batch-size", "3", "--seed", "5", "--quiet"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the job records threads per process: the ranks run with 1
    try:
        assert main([*argv, "--images-dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    mp.spawn(_rank, args=(2, _free_port(), [*argv, "--images-dir", str(tmp_path / "two")]), nprocs=2, join=True)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    # each index once, the job spec and the manifest, no temp files or journals left
    assert sorted(one) == [f"{i:06d}.png" for i in range(11)] + ["job.json", "manifest.jsonl"]
    assert one == two
    assert len({one[f"{i:06d}.png"] for i in range(11)}) == 11  # different noise per image: images differ
    records = [json.loads(x) for x in one["manifest.jsonl"].decode().splitlines()]
    assert [r["index"] for r in records] == list(range(11)) and [r["seed"] for r in records] == list(range(5, 16))
    spec = json.loads(one["job.json"])
    assert spec["model"]["kind"] == "checkpoint" and spec["images"] == 11 and spec["settings"]["model_type"] == "gan"
    # another seed gives other images (and another directory: the first one refuses it)
    with pytest.raises(ValueError, match=r"seed: 5 in the job, 6 now"):
        main([*argv[:-2], "6", "--quiet", "--images-dir", str(tmp_path / "one")])
    assert main([*argv[:-2], "6", "--quiet", "--images-dir", str(tmp_path / "six")]) == 0
    six = _files(tmp_path / "six")
    assert all(six[f"{i:06d}.png"] != one[f"{i:06d}.png"] for i in range(11))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_long_job_keeps_memory_flat(gan_ckpt, tmp_path, monkeypatch):
    """3000 images in 60 batches streamed to disk: RSS after the warm-up batches stays within a few
    MB to the end (a leak of one batch's images, 50 x 3 x 16 x 16 float32 = 150 KB, or of their
    PNGs, per batch would add ~9 MB)."""
    import dalle2_fast.data.images as images

    rss, encode = [], images.png_bytes

    def counting_encode(image, meta=None):
        out = encode(image, meta)
        if meta["index"] % 50 == 49:  # the last image of each batch
            rss.append(_rss_bytes())
        return out

    monkeypatch.setattr(images, "png_bytes", counting_encode)
    assert main(["sample", "--checkpoint", str(gan_ckpt), "-n", "3000", "--batch-size", "50", "--quiet",
                 "--images-dir", str(tmp_path / "many")]) == 0
    assert len(rss) == 60 and len(os.listdir(tmp_path / "many")) == 3000 + 2
    assert len((tmp_path / "many" / "manifest.jsonl").read_text().splitlines()) == 3000
    warm = max(rss[5:15])
    growth = max(rss[15:]) - warm
    assert growth < 4 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 45 batches ({[r >> 20 for r in rss]} MB)"
