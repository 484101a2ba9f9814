"""``torchrun``-style training with 2 gloo processes: DDP on disjoint halves of each global batch
gives the loss curve and final weights of one process on the whole batch; only rank 0 writes.
Every task of ``train`` is covered by the DDP plan, and the tasks that draw per-item randomness
(GAN latents, diffusion timesteps / noise / label dropout, the classifier's noise) draw it from
the items' own seeds, so the two ranks reproduce the single-process run."""
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


def _noise_driven(w):
    """{name: mask} of weights whose true gradient is exactly zero, so that their gradient is float
    noise which Adam turns into steps of about +-lr whatever its size: two runs that differ in
    rounding only agree on them to a few lr, not to float tolerance. They are a conv bias right
    before batch norm (the batch mean removes it) with that norm's running mean (which absorbs
    it), and the key third of a fused qkv bias (softmax is shift invariant; [q|k|v] order)."""
    out = {}
    for k, v in w.items():
        if k.endswith(".running_mean"):
            prefix, j = k[: -len(".running_mean")].rsplit(".", 1)
            bias = f"{prefix}.{int(j) - 1}.bias"
            if bias in w:
                out[k] = out[bias] = torch.ones_like(v, dtype=torch.bool)
        if k.endswith("qkv.bias"):
            out[k] = torch.zeros_like(v, dtype=torch.bool)
            out[k][len(v) // 3: 2 * len(v) // 3] = True
    return out


def _same_run(one, two, rtol=1e-4, atol=1e-5, final="final", noise_atol=0.0):
    ra, rb = _rows(one / "loss.csv"), _rows(two / "loss.csv")
    assert [r["step"] for r in ra] == [r["step"] for r in rb]  # written once (rank 0), not twice
    for a, b in zip(ra, rb):
        for k in a:
            assert float(a[k]) == pytest.approx(float(b[k]), rel=rtol, abs=1e-6), (k, a, b)
    wa = load_file(str(one / final / "model.safetensors"))
    wb = load_file(str(two / final / "model.safetensors"))
    assert wa.keys() == wb.keys()
    noisy = _noise_driven(wa) if noise_atol else {}
    for k in wa:
        m = noisy.get(k, torch.zeros_like(wa[k], dtype=torch.bool))
        torch.testing.assert_close(wa[k][~m], wb[k][~m], rtol=rtol, atol=atol, msg=k)
        torch.testing.assert_close(wa[k][m], wb[k][m], rtol=0, atol=noise_atol, msg=k)


def test_every_task_has_a_ddp_plan():
    """Every task names the parts DDP wraps, and each part is a submodule or a method of its model."""
    from types import SimpleNamespace

    import torch.nn as nn

    from dalle2_fast.recipes import make_task
    from dalle2_fast.recipes.suite import SUITE

    opts = SimpleNamespace(resolution=16, data="shapes", set=[], vqvae=None, classes=None, bpd_n=2, sample_steps=2)
    for name in (*SUITE, "clip"):
        task = make_task(name, opts)
        assert task.ddp_parts, name
        if name == "vqvae2-prior":  # needs a trained VQ-VAE-2 to build; its part is its loss method
            assert task.ddp_parts == ("loss",)
            continue
        model = task.build()
        for part in task.ddp_parts:
            assert part == "forward" or isinstance(getattr(model, part), nn.Module) or callable(getattr(model, part))


def test_item_seeds_do_not_depend_on_the_slice():
    # what makes ranks agree: item i's seeds are a function of (seed, global index, purpose) only
    from dalle2_fast.seeding import ItemSeeds
    whole = ItemSeeds(3, 8, 4)
    assert whole("t")[2:] == ItemSeeds(3, 10, 2)("t")
    assert len(set(whole("t") + whole("noise") + ItemSeeds(4, 8, 4)("t"))) == 12  # purposes, runs differ


def test_vae_two_ranks_match_one_process(tmp_path):
    # the reparameterisation noise of image i comes from its own seed, not from a rank's RNG
    argv = ["train", "vae", "--steps", "3", "--ckpt-every", "3", *TINY, "--set", "channels=8"]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    _same_run(tmp_path / "one", tmp_path / "two")


def test_gan_two_ranks_match_one_process(tmp_path):
    """Two DDP networks, three discriminator forwards per step (real and detached fake feed one
    backward; the generator step's runs under no_sync), batch norm in both networks over the
    global batch (SyncBatchNorm on gloo), and latents from the items' seeds."""
    argv = ["train", "gan", "--steps", "3", "--ckpt-every", "3", *TINY, "--set", "g_width=8", "--set", "d_width=8",
            "--set", "d_norm=batch", "--set", "z_dim=8"]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    _same_run(tmp_path / "one", tmp_path / "two", noise_atol=2 * 2e-4 * 3)  # 2 lr per step, 3 steps


# a tiny U-Net (16 channels, 2 levels, attention at 8x8), 20 diffusion steps, cheap evaluation
UNET = ["--set", "model_channels=16", "--set", "channel_mult=1,2", "--set", "num_res_blocks=1",
        "--set", "attention_resolutions=8", "--set", "num_head_channels=16", "--set", "num_groups=8",
        "--set", "num_timesteps=20", "--set", "dropout=0.3", "--bpd-n", "2", "--sample-steps", "2"]


def test_adm_two_ranks_match_one_process(tmp_path):
    """ADM: learned variance (hybrid loss), class labels with 50% dropped for CFG, dropout in the
    residual blocks (masks from the items' seeds), gradient clipping on the all-reduced
    gradients, and the EMA written as final/ (raw weights in final_raw/)."""
    argv = ["train", "adm", "--steps", "3", "--ckpt-every", "3", *TINY, *UNET, "--set", "p_uncond=0.5",
            "--ema", "0.5"]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    _same_run(tmp_path / "one", tmp_path / "two", noise_atol=2 * 5e-4 * 3)  # 2 lr per step, 3 steps
    _same_run(tmp_path / "one", tmp_path / "two", final="final_raw", noise_atol=2 * 5e-4 * 3)
    assert "vb" in _rows(tmp_path / "one" / "loss.csv")[0]


def test_classifier_two_ranks_match_one_process(tmp_path):
    argv = ["train", "classifier", "--steps", "3", "--ckpt-every", "3", *TINY, "--set", "model_channels=16",
            "--set", "channel_mult=1,2", "--set", "num_res_blocks=1", "--set", "attention_resolutions=8",
            "--set", "num_head_channels=16", "--set", "num_groups=8", "--set", "num_timesteps=20"]
    main([*argv, "--out", str(tmp_path / "one")])
    _torchrun([*argv, "--out", str(tmp_path / "two")])
    _same_run(tmp_path / "one", tmp_path / "two", noise_atol=2 * 5e-4 * 3)  # 2 lr per step, 3 steps


def test_item_dropout_masks_follow_the_items():
    """U-Net dropout under item_dropout: the two halves of a batch, run separately, give the
    rows of the whole batch (what two ranks rely on), and activation checkpointing's recompute
    in backward redraws the same masks (same gradients as without checkpointing)."""
    from dalle2_fast.models.unet import UNet, UNetConfig
    from dalle2_fast.seeding import ItemSeeds
    from dalle2_fast.train.distributed import ItemDropout, item_dropout

    cfg = UNetConfig(image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     num_groups=4, dropout=0.5)
    torch.manual_seed(0)
    net = UNet(cfg).train()
    for p in net.parameters():  # ADM zero-initialises the convs after dropout: make dropout visible
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([1, 5, 9, 13])
    with item_dropout(net, ItemSeeds(0, 10, 4)):
        whole = net(x, t)
    assert any(type(m) is ItemDropout for m in net.modules())
    with item_dropout(net, ItemSeeds(0, 12, 2)):
        half = net(x[2:], t[2:])
    torch.testing.assert_close(half, whole[2:], rtol=1e-5, atol=1e-6)
    with item_dropout(net, ItemSeeds(0, 11, 4)):  # other items, other masks
        assert not torch.allclose(net(x, t), whole)

    grads = []
    for ckpt in (False, True):
        net.set_checkpointing(ckpt)
        net.zero_grad()
        with item_dropout(net, ItemSeeds(0, 10, 4)):
            net(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _micro_unclip():
    from dalle2_fast.recipes.unclip import Stage, UnCLIPRecipe

    return UnCLIPRecipe(n_train=32, base_res=16, upsample_res=(32,), clip=Stage(2, 8), prior=Stage(3, 8),
                        decoder=Stage(2, 4), upsampler=Stage(2, 4), prior_width=32, prior_layers=1,
                        decoder_channels=16, upsampler_channels=16)


def _unclip_rank(rank, world, port, out, stage):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from dalle2_fast.recipes.unclip import train_unclip

    assert train_unclip(_micro_unclip(), out, progress=False, stages=[stage]) is None  # torchrun: no assembly


def test_unclip_stage_two_ranks_match_one_process(tmp_path):
    """A stage of the unCLIP recipe (the diffusion prior: per-item timestep, noise and text drop)
    trained by 2 gloo ranks ends with the weights one process gets; the recipe then reuses it."""
    import shutil

    from dalle2_fast.recipes.unclip import train_unclip

    one, two = tmp_path / "one", tmp_path / "two"
    train_unclip(_micro_unclip(), one, progress=False, stages=["clip"])
    shutil.copytree(one / "stages", two / "stages")
    train_unclip(_micro_unclip(), one, progress=False, stages=["prior"])
    mp.spawn(_unclip_rank, args=(2, _free_port(), two, "prior"), nprocs=2, join=True)
    assert (two / "stages" / "prior.json").is_file()  # rank 0 marked the stage done
    # the key third of each fused qkv bias has an exactly-zero true gradient: held to 2 lr per step
    _same_run(one / "stages" / "prior", two / "stages" / "prior", noise_atol=2 * 1e-3 * 3)
