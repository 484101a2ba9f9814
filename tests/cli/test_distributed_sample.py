"""Sampling to one PNG per image: 2 torchrun-style gloo ranks write every image exactly once,
byte-identical to one process; a long run in batches keeps RSS flat."""
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
    argv = ["sample", "--checkpoint", str(gan_ckpt), "-n", "11", "--batch-size", "3", "--seed", "5"]
    assert main([*argv, "--images-dir", str(tmp_path / "one")]) == 0
    mp.spawn(_rank, args=(2, _free_port(), [*argv, "--images-dir", str(tmp_path / "two")]), nprocs=2, join=True)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == [f"{i:06d}.png" for i in range(11)]  # each index once, no temp files left
    assert one == two
    assert len(set(one.values())) == 11  # different noise per image: the test can tell images apart
    # another seed gives other images
    assert main([*argv[:-1], "6", "--images-dir", str(tmp_path / "six")]) == 0
    assert _files(tmp_path / "six") != one


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_long_sampling_run_keeps_memory_flat(gan_ckpt, tmp_path, monkeypatch):
    """3000 images in 60 batches streamed to disk: RSS after the warm-up batches stays within a few
    MB to the end (a leak of one batch's images, 50 x 3 x 16 x 16 float32 = 150 KB, per batch would
    add ~9 MB)."""
    import dalle2_fast.data.images as images

    rss, save = [], images.save_png

    def counting_save(image, path, *a, **k):
        out = save(image, path, *a, **k)
        if path.name.endswith("49.png") or path.name.endswith("99.png"):  # the last image of each batch
            rss.append(_rss_bytes())
        return out

    monkeypatch.setattr(images, "save_png", counting_save)
    assert main(["sample", "--checkpoint", str(gan_ckpt), "-n", "3000", "--batch-size", "50", "--quiet",
                 "--images-dir", str(tmp_path / "many")]) == 0
    assert len(rss) == 60 and len(os.listdir(tmp_path / "many")) == 3000
    warm = max(rss[5:15])
    growth = max(rss[15:]) - warm
    assert growth < 4 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 45 batches ({[r >> 20 for r in rss]} MB)"
