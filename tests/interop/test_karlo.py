"""Kakao Brain's original Karlo checkpoints -> our stages. No original Karlo code is installable, so
the original files are built here from tiny diffusers reference components through the key
correspondence diffusers' ``scripts/convert_kakao_brain_unclip_to_diffusers.py`` publishes (read
backwards: Karlo names, head-major fused ``c_qkv`` / ``qkv`` / ``encoder_kv`` as 1x1 convolutions,
Lightning's ``state_dict``), and our imports must give the reference's outputs to 1e-5."""
import argparse

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from dalle2_fast.checkpoint import CheckpointError  # noqa: E402
from dalle2_fast.interop._io import UnsafeCheckpointError  # noqa: E402
from dalle2_fast.interop.karlo import decoder_from_karlo, prior_from_karlo, upsampler_from_karlo  # noqa: E402
from tests.interop._unclip_refs import D, close, decoder, prior, super_res, text_inputs, text_proj  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _head_major(parts, head_dim):
    """Separate (C, Cin) projections -> Karlo's fused rows [head][part][c]."""
    heads = parts[0].shape[0] // head_dim
    return torch.cat([p[h * head_dim:(h + 1) * head_dim] for h in range(heads) for p in parts])


def _lightning(path, state, **extra):
    torch.save({"state_dict": state, "epoch": 7, "global_step": 1_000_000, **extra}, path)
    return path


def karlo_prior_state(ref, head_dim):
    sd, o = ref.state_dict(), {}
    ren = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "proj_in": "clip_img_proj", "embedding_proj": "text_emb_proj", "encoder_hidden_states_proj": "text_enc_proj",
           "norm_out": "final_ln", "proj_to_clip_embeddings": "out_proj"}
    for a, b in ren.items():
        for s in ("weight", "bias"):
            o[f"model.{b}.{s}"] = sd[f"{a}.{s}"]
    o["model.positional_embedding"], o["model.prd_emb"] = sd["positional_embedding"], sd["prd_embedding"]
    for i in range(len(ref.transformer_blocks)):
        t, k = f"transformer_blocks.{i}", f"model.transformer.resblocks.{i}"
        for s in ("weight", "bias"):
            o[f"{k}.attn.c_qkv.{s}"] = _head_major([sd[f"{t}.attn1.to_{p}.{s}"] for p in "qkv"], head_dim)
            for a, b in (("attn1.to_out.0", "attn.c_proj"), ("ff.net.0.proj", "mlp.c_fc"), ("ff.net.2", "mlp.c_proj"),
                         ("norm1", "ln_1"), ("norm3", "ln_2")):
                o[f"{k}.{b}.{s}"] = sd[f"{t}.{a}.{s}"]
    o["model.causal_mask"] = torch.zeros(1)  # Karlo's non-weight buffers are ignored
    return o


def _res(sd, theirs, ours, o):
    for a, b in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                 ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")):
        for s in ("weight", "bias"):
            if f"{theirs}.{a}.{s}" in sd:
                o[f"{ours}.{b}.{s}"] = sd[f"{theirs}.{a}.{s}"]


def _attn(sd, theirs, ours, o, head_dim):
    for s in ("weight", "bias"):
        o[f"{ours}.norm.{s}"] = sd[f"{theirs}.group_norm.{s}"]
        qkv = _head_major([sd[f"{theirs}.to_{p}.{s}"] for p in "qkv"], head_dim)
        kv = _head_major([sd[f"{theirs}.add_{p}_proj.{s}"] for p in "kv"], head_dim)
        out = sd[f"{theirs}.to_out.0.{s}"]
        o[f"{ours}.qkv.{s}"], o[f"{ours}.encoder_kv.{s}"], o[f"{ours}.proj_out.{s}"] = (
            (qkv[..., None], kv[..., None], out[..., None]) if s == "weight" else (qkv, kv, out))


def karlo_unet_state(ref, prefix, head_dim=None):
    """diffusers UNet2D(Condition)Model -> guided-diffusion keys, block indices as the conversion script
    walks them (original_down_block_idx from 1; the up path's upsampler sits in the block before)."""
    sd, o = ref.state_dict(), {}
    p = prefix
    for a, b in (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                 ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")):
        for s in ("weight", "bias"):
            o[f"{p}{b}.{s}"] = sd[f"{a}.{s}"]
    idx = 1
    for i, blk in enumerate(ref.down_blocks):
        n = len(blk.resnets)
        for j in range(n):
            _res(sd, f"down_blocks.{i}.resnets.{j}", f"{p}input_blocks.{idx + j}.0", o)
            if hasattr(blk, "attentions"):
                _attn(sd, f"down_blocks.{i}.attentions.{j}", f"{p}input_blocks.{idx + j}.1", o, head_dim)
        if blk.downsamplers is not None:
            _res(sd, f"down_blocks.{i}.downsamplers.0", f"{p}input_blocks.{idx + n}.0", o)
            n += 1
        idx += n
    mid_attn = getattr(ref.mid_block, "attentions", [None])[0] is not None
    _res(sd, "mid_block.resnets.0", f"{p}middle_block.0", o)
    if mid_attn:
        _attn(sd, "mid_block.attentions.0", f"{p}middle_block.1", o, head_dim)
    _res(sd, "mid_block.resnets.1", f"{p}middle_block.{2 if mid_attn else 1}", o)
    idx = 0
    for i, blk in enumerate(ref.up_blocks):
        n, has_attn = len(blk.resnets), hasattr(blk, "attentions")
        for j in range(n):
            _res(sd, f"up_blocks.{i}.resnets.{j}", f"{p}output_blocks.{idx + j}.0", o)
            if has_attn:
                _attn(sd, f"up_blocks.{i}.attentions.{j}", f"{p}output_blocks.{idx + j}.1", o, head_dim)
        if blk.upsamplers is not None:
            _res(sd, f"up_blocks.{i}.upsamplers.0", f"{p}output_blocks.{idx + n - 1}.{2 if has_attn else 1}", o)
        idx += n
    return o


def karlo_decoder_state(dec, tp):
    o = karlo_unet_state(dec, "model.", head_dim=16)
    sd = tp.state_dict()
    for a, b in (("encoder_hidden_states_proj", "text_seq_proj.0"), ("text_encoder_hidden_states_norm", "text_seq_proj.1"),
                 ("clip_extra_context_tokens_proj", "clip_tok_proj"), ("embedding_proj", "text_feat_proj"),
                 ("clip_image_embeddings_project_to_time_embeddings", "clip_emb")):
        for s in ("weight", "bias"):
            o[f"model.{b}.{s}"] = sd[f"{a}.{s}"]
    o["model.cf_param"] = sd["learned_classifier_free_guidance_embeddings"]
    return o


def test_prior_matches_reference(tmp_path):
    ref = prior(seed=31)
    ckpt = _lightning(tmp_path / "prior-ckpt-step=01000000-of-01000000.ckpt", karlo_prior_state(ref, 16))
    torch.save((ref.clip_mean[0].clone(), ref.clip_std[0].clone()), tmp_path / "ViT-L-14_stats.th")
    ours = prior_from_karlo(ckpt, tmp_path / "ViT-L-14_stats.th", heads=2)
    assert ours.config.x0_clamp == 10.0 and ours.config.sampling.spacing == "even"  # Karlo's own sampling
    tok, mask, emb = text_inputs(3)
    x, t = torch.randn(3, D) * 2, torch.tensor([0, 999, 321])
    with torch.no_grad():
        close(ours(x, t, tok, mask, emb), ref(x, t, proj_embedding=emb, encoder_hidden_states=tok,
                                              attention_mask=mask).predicted_image_embedding)
    torch.testing.assert_close(ours.from_latent(x), ref.post_process_latents(x))


def test_decoder_matches_reference(tmp_path):
    dec, tp = decoder(seed=32), text_proj(seed=33)
    ckpt = _lightning(tmp_path / "decoder-ckpt-step=01000000-of-01000000.ckpt", karlo_decoder_state(dec, tp))
    flags = dict(image_size=16, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8", num_head_channels=16)
    ours = decoder_from_karlo(ckpt, flags=flags, text_len=16)
    b = 3
    tok, mask, emb = text_inputs(b)
    g = torch.Generator().manual_seed(1)
    z, x, t = torch.randn(b, D, generator=g) * 2, torch.randn(b, 3, 16, 16, generator=g), torch.tensor([0, 999, 64])
    with torch.no_grad():
        hid, add = tp(image_embeddings=z, prompt_embeds=emb, text_encoder_hidden_states=tok,
                      do_classifier_free_guidance=False)
        want = dec(sample=x, timestep=t, encoder_hidden_states=hid, class_labels=add,
                   attention_mask=F.pad(mask, (4, 0), value=True)).sample
        close(ours(x, t, z, tok, mask, emb), want)


@pytest.mark.parametrize("shift", ["default", "scale_shift"])  # additive time embedding (Karlo's) or AdaGN
def test_super_res_matches_reference(tmp_path, shift):
    first, last = super_res(34, shift=shift), super_res(35, shift=shift)
    state = {**karlo_unet_state(first, "model_first_steps."), **karlo_unet_state(last, "model_last_step.")}
    ckpt = _lightning(tmp_path / "improved-sr-ckpt-step=1.2M.ckpt", state)
    ours = upsampler_from_karlo(ckpt, flags=dict(image_size=32, channel_mult="1,2", num_res_blocks=1), low_res=16)
    assert ours.unet.config.use_scale_shift_norm == (shift == "scale_shift")
    g = torch.Generator().manual_seed(2)
    x, low, t = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.tensor([7, 999])
    cond = ours.condition(low, (32, 32))
    with torch.no_grad():
        close(ours.unet(x, t, low_res=cond), first(torch.cat([x, cond], 1), t).sample)
        close(ours.unet_last(x, t, low_res=cond), last(torch.cat([x, cond], 1), t).sample)


def test_unsafe_pickles_are_refused_with_the_global_named(tmp_path):
    ref = prior(seed=36)
    ckpt = _lightning(tmp_path / "p.ckpt", karlo_prior_state(ref, 16), hyper_parameters=argparse.Namespace(lr=1))
    torch.save((ref.clip_mean[0], ref.clip_std[0]), tmp_path / "stats.th")
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace"):
        prior_from_karlo(ckpt, tmp_path / "stats.th", heads=2)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    ref = prior(seed=37)
    torch.save((ref.clip_mean[0], ref.clip_std[0]), tmp_path / "stats.th")
    state = karlo_prior_state(ref, 16)
    state.pop("model.transformer.resblocks.1.mlp.c_fc.weight")
    with pytest.raises(CheckpointError, match=r"resblocks\.1\.mlp\.c_fc\.weight"):
        prior_from_karlo(_lightning(tmp_path / "a.ckpt", state), tmp_path / "stats.th", heads=2)
    state = karlo_prior_state(ref, 16)
    state["model.transformer.resblocks.0.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"does not understand.*attn\.extra\.weight"):
        prior_from_karlo(_lightning(tmp_path / "b.ckpt", state), tmp_path / "stats.th", heads=2)
    torch.save({"mean": ref.clip_mean}, tmp_path / "bad_stats.th")
    with pytest.raises(CheckpointError, match="clip_mean, clip_std"):
        prior_from_karlo(_lightning(tmp_path / "c.ckpt", karlo_prior_state(ref, 16)), tmp_path / "bad_stats.th",
                         heads=2)


def test_folder_needs_the_four_files(tmp_path):
    from dalle2_fast.interop.karlo import find_files, is_karlo_folder

    (tmp_path / "prior-ckpt-step=1.ckpt").write_bytes(b"")
    assert not is_karlo_folder(tmp_path)
    with pytest.raises(CheckpointError, match=r"decoder-ckpt\*\.ckpt.*none"):
        find_files(tmp_path)


def test_pipeline_from_the_original_files(tmp_path):
    """The four files + a transformers text encoder: from_karlo builds the chain and samples (Karlo's
    own conventions: x0 clamp 10, 'even' spacing); the converted pipeline saves and reloads."""
    from dalle2_fast.pipeline import UnCLIPPipeline
    from tests.interop._unclip_refs import PROMPTS, text_encoder, write_tokenizer

    ref = prior(seed=41)
    _lightning(tmp_path / "prior-ckpt-step=01000000-of-01000000.ckpt", karlo_prior_state(ref, 16))
    torch.save((ref.clip_mean[0].clone(), ref.clip_std[0].clone()), tmp_path / "ViT-L-14_stats.th")
    _lightning(tmp_path / "decoder-ckpt-step=01000000-of-01000000.ckpt",
               karlo_decoder_state(decoder(seed=42), text_proj(seed=43)))
    _lightning(tmp_path / "improved-sr-ckpt-step=1.2M.ckpt", {**karlo_unet_state(super_res(44), "model_first_steps."),
                                                              **karlo_unet_state(super_res(45), "model_last_step.")})
    text_encoder(seed=46).save_pretrained(str(tmp_path / "text_encoder"))
    write_tokenizer(tmp_path / "tokenizer")
    over = {"prior_heads": 2, "decoder": dict(image_size=16, channel_mult="1,2", num_res_blocks=1,
                                              attention_resolutions="8", num_head_channels=16),
            "sr": dict(image_size=32, channel_mult="1,2", num_res_blocks=1)}
    pipe = UnCLIPPipeline.from_karlo(tmp_path, overrides=over)
    assert pipe.prior.config.x0_clamp == 10.0 and pipe.decoder.config.sampling.spacing == "even"
    imgs = pipe(PROMPTS[:2], seed=3, prior_steps=3, decoder_steps=3, upsampler_steps=2)
    assert imgs.shape == (2, 3, 32, 32) and torch.isfinite(imgs).all()
    back = UnCLIPPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "ours"))
    torch.testing.assert_close(back(PROMPTS[:2], seed=3, prior_steps=3, decoder_steps=3, upsampler_steps=2), imgs)
