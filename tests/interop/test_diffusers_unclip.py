"""A diffusers UnCLIPPipeline folder in Karlo's layout -> our UnCLIPPipeline: every component's
forward equal to the reference to 1e-5, the decoder's learned-variance steps equal to
UnCLIPScheduler's, and the whole pipeline's images equal to diffusers' with the same latents and
noise; plus the folder checks."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dalle2_fast.checkpoint import CheckpointError  # noqa: E402
from dalle2_fast.pipeline import UnCLIPPipeline  # noqa: E402
from tests.interop._unclip_refs import (D, HIDDEN, L, PROMPTS, Recorder, close, double_tables,  # noqa: E402
                                        karlo_pipeline, scheduler_step, text_inputs)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    """(diffusers reference pipeline, its folder, our pipeline converted from the folder)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("karlo")
    ref = karlo_pipeline(folder)
    return ref, folder, UnCLIPPipeline.from_diffusers(folder)


def _ref_text(ref, prompts):
    t = ref.tokenizer(prompts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = ref.text_encoder(t.input_ids)
    return out.text_embeds, out.last_hidden_state, t.attention_mask.bool()


def test_text_encoder_matches_transformers(karlo):
    ref, _, ours = karlo
    prompts = PROMPTS + ["", "a long prompt " * 8]  # the empty prompt; one truncated at the context length
    emb, hid, mask = _ref_text(ref, prompts)
    enc = ours.clip.encode_text(prompts)
    assert torch.equal(enc.mask, mask)
    close(enc.raw_embed, emb)
    close(enc.tokens[mask], hid[mask])  # padded positions are masked wherever they are read
    assert ours.clip.config.text_only
    with pytest.raises(ValueError, match="text tower only"):
        ours.clip.encode_image(torch.zeros(1, 3, 8, 8))


def test_decoder_forward_matches_diffusers(karlo):
    ref, _, ours = karlo
    b = 4
    tok, mask, emb = text_inputs(b)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(b, D, generator=g) * 3  # raw CLIP image embeddings: not unit-norm
    x = torch.randn(b, 3, 16, 16, generator=g)
    t = torch.tensor([0, 999, 431, 17])
    with torch.no_grad():
        hid, add = ref.text_proj(image_embeddings=z, prompt_embeds=emb, text_encoder_hidden_states=tok,
                                 do_classifier_free_guidance=False)
        want = ref.decoder(sample=x, timestep=t, encoder_hidden_states=hid, class_labels=add,
                           attention_mask=F.pad(mask, (4, 0), value=True)).sample
        got = ours.decoder(x, t, z, tok, mask, emb)
    close(got, want)
    # the learned null image embedding is diffusers' classifier-free guidance embedding
    torch.testing.assert_close(ours.decoder.null_image_embed(z)[0], ref.text_proj.learned_classifier_free_guidance_embeddings)


def test_super_res_forward_matches_diffusers(karlo):
    ref, _, ours = karlo
    up = ours.upsamplers[0]
    assert up.config.last_step_unet and up.config.low_res_upsample == "bicubic_antialias"
    g = torch.Generator().manual_seed(4)
    low = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    x = torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([999, 0])
    cond = up.condition(low, (32, 32))
    torch.testing.assert_close(cond, F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False,
                                                   antialias=True))
    with torch.no_grad():
        for ours_net, theirs in ((up.unet, ref.super_res_first), (up.unet_last, ref.super_res_last)):
            close(ours_net(x, t, low_res=cond), theirs(torch.cat([x, cond], dim=1), t).sample)


def test_decoder_steps_match_unclip_scheduler(karlo):
    """Learned-range variance, CFG with the learned null z_i and the empty prompt, x0 clipped: one
    step at a time along our trajectory, diffusers' UnCLIPScheduler (float64 tables) lands where we do."""
    ref, _, ours = karlo
    dec, steps, g = ours.decoder, 5, 8.0
    enc = ours.clip.encode_text(PROMPTS[:2])
    null = ours.clip.encode_text([""])
    z = torch.randn(2, D, generator=torch.Generator().manual_seed(5)) * 2
    with Recorder() as rec:
        dec.sample(z, enc, seeds=[1, 2], steps=steps, guidance=g, null_text=null)
    xs = [rec.draws[0]] + rec.xs
    sched = ref.decoder_scheduler
    sched.set_timesteps(steps)
    double_tables(sched)
    ts = sched.timesteps.tolist()
    emb, hid, mask = _ref_text(ref, [""] * 2 + PROMPTS[:2])
    with torch.no_grad():
        ctx, add = ref.text_proj(image_embeddings=z, prompt_embeds=emb, text_encoder_hidden_states=hid,
                                 do_classifier_free_guidance=True)
    for k, t in enumerate(ts):
        with torch.no_grad():
            out = ref.decoder(sample=torch.cat([xs[k]] * 2), timestep=t, encoder_hidden_states=ctx, class_labels=add,
                              attention_mask=F.pad(mask, (4, 0), value=True)).sample.double()
        u, c = out.chunk(2)
        pred = torch.cat([u[:, :3] + g * (c[:, :3] - u[:, :3]), c[:, 3:]], dim=1)
        want = scheduler_step(sched, pred, t, xs[k].double(), ts[k + 1] if k + 1 < len(ts) else None,
                              rec.draws[k + 1].double())
        close(xs[k + 1], want, tol=3e-5)


def test_pipeline_images_equal_diffusers(karlo):
    """The whole chain, with our latents given to diffusers (prior_latents, decoder_latents,
    super_res_latents) and our per-step noise injected into its schedulers (float64 tables).

    Tolerances: the prior's z_i and the decoder's 16 px image agree to 1e-5 / 3e-4 (our prior runs
    its text prefix once, a different float summation order; the decoder's guided steps (scale 8)
    amplify z_i's 1e-7-relative differences to ~1.5e-4 at a few pixels). The final image
    agrees to 2e-5 on average but up to ~3e-3 at a few pixels: the first super-resolution step, at
    t = 999, predicts x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) with sqrt(abar_999) = 4.9e-5, which
    multiplies the two networks' float32 rounding differences (1e-7 relative) by 2e4 wherever x0 is
    not clipped; measured one step at a time, that step is the only one that differs by more than
    1e-5 (1.3e-3)."""
    import diffusers.schedulers.scheduling_unclip as su

    ref, _, ours = karlo
    steps = dict(prior_steps=4, decoder_steps=5, upsampler_steps=3)
    mine, theirs = {}, {}
    with Recorder() as rec, _capture(ours, ref, mine, theirs):
        got = ours(PROMPTS, seed=11, batch_size=len(PROMPTS), **steps)
        n = [steps["prior_steps"], steps["decoder_steps"], steps["upsampler_steps"]]
        starts = [0, 1 + n[0], 2 + n[0] + n[1]]
        latents = [rec.draws[s] for s in starts]
        queue = [rec.draws[s + 1 + k] for s, m in zip(starts, n) for k in range(m - 1)]  # theirs: none at t = 0
        for s in (ref.prior_scheduler, ref.decoder_scheduler, ref.super_res_scheduler):
            double_tables(s)
        saved = su.randn_tensor
        su.randn_tensor = lambda shape, **kw: queue.pop(0).reshape(shape).to(kw.get("dtype"))
        try:
            want = ref(PROMPTS, prior_num_inference_steps=n[0], decoder_num_inference_steps=n[1],
                       super_res_num_inference_steps=n[2], prior_latents=latents[0], decoder_latents=latents[1],
                       super_res_latents=latents[2], output_type="np").images
        finally:
            su.randn_tensor = saved
    assert not queue
    close(mine["z"], theirs["z"][-len(PROMPTS):])  # theirs: (null; cond) rows
    close(ours.upsamplers[0].condition(mine["small"], (32, 32)), theirs["up"], tol=3e-4)
    err = np.abs(got.permute(0, 2, 3, 1).numpy() - want)
    assert err.mean() < 2e-5 and err.max() < 1e-2, f"images differ by {err.mean():.3g} on average, {err.max():.3g} max"
    assert float(np.abs(want - want.mean()).max()) > 0.05  # not a degenerate (flat) image


class _capture:
    """Records our prior's z_i and decoder image, and what diffusers' text_proj and super_res_first see
    (instance attributes shadowing the methods; removed on exit)."""

    def __init__(self, ours, ref, mine, theirs):
        self.ours, self.ref, self.mine, self.theirs = ours, ref, mine, theirs

    def __enter__(self):
        o, r, mine, theirs = self.ours, self.ref, self.mine, self.theirs
        tte, ds, tp, sr = o.text_to_embeddings, o.decoder.sample, r.text_proj.forward, r.super_res_first.forward

        def text_to_embeddings(*a, **k):
            out = tte(*a, **k)
            mine["z"] = out[1]
            return out

        def sample(*a, **k):
            mine["small"] = ds(*a, **k)
            return mine["small"]

        def text_proj(**k):
            theirs.setdefault("z", k["image_embeddings"])
            return tp(**k)

        def super_res(sample, timestep, **k):
            theirs.setdefault("up", sample[:, 3:])
            return sr(sample, timestep, **k)

        self.patched = [(o, "text_to_embeddings", text_to_embeddings), (o.decoder, "sample", sample),
                        (r.text_proj, "forward", text_proj), (r.super_res_first, "forward", super_res)]
        for obj, name, fn in self.patched:
            obj.__dict__[name] = fn
        return self

    def __exit__(self, *exc):
        for obj, name, _ in self.patched:
            del obj.__dict__[name]


def test_save_pretrained_round_trip(karlo, tmp_path):
    _, _, ours = karlo
    back = UnCLIPPipeline.from_pretrained(ours.save_pretrained(tmp_path / "ours"))
    assert back.defaults == ours.defaults and back.prior.config == ours.prior.config
    assert back.decoder.config == ours.decoder.config and back.upsamplers[0].config == ours.upsamplers[0].config
    a = ours(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
    torch.testing.assert_close(back(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2), a)


def test_from_pretrained_recognises_the_diffusers_folder(karlo):
    _, folder, ours = karlo
    pipe = UnCLIPPipeline.from_pretrained(folder)
    assert pipe.defaults == ours.defaults == dict(prior_steps=25, decoder_steps=25, upsampler_steps=7,
                                                  prior_guidance=4.0, decoder_guidance=8.0)


def test_bfloat16_pipeline_runs(karlo):
    _, folder, ours = karlo
    pipe = UnCLIPPipeline.from_diffusers(folder, dtype=torch.bfloat16)
    assert pipe.decoder.unet.time_embed[0].weight.dtype == torch.bfloat16
    a = pipe(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
    b = ours(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a - b).abs().mean() < 0.1  # bfloat16 rounding, same images


def test_unknown_folder_layout_says_what_was_expected(karlo, tmp_path):
    _, folder, _ = karlo
    with pytest.raises(CheckpointError, match="model_index.json"):
        UnCLIPPipeline.from_diffusers(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "super_res_last")
    with pytest.raises(CheckpointError, match=r"missing \['super_res_last'\].*text_proj/"):
        UnCLIPPipeline.from_diffusers(broken)
    idx = json.loads((folder / "model_index.json").read_text())
    idx["_class_name"] = "StableDiffusionPipeline"
    shutil.copytree(folder / "super_res_first", broken / "super_res_last")
    (broken / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="StableDiffusionPipeline"):
        UnCLIPPipeline.from_diffusers(broken)


def test_unsupported_block_is_named(karlo, tmp_path):
    _, folder, _ = karlo
    broken = tmp_path / "b"
    shutil.copytree(folder, broken)
    cfg = json.loads((broken / "decoder" / "config.json").read_text())
    cfg["down_block_types"][1] = "CrossAttnDownBlock2D"
    (broken / "decoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="CrossAttnDownBlock2D.*supported"):
        UnCLIPPipeline.from_diffusers(broken)


def test_gelu_text_encoder_and_bin_weights(tmp_path):
    """hidden_act 'gelu' maps to open_clip without QuickGELU; '.bin' weights are read weights-only."""
    from dalle2_fast.interop.hf_clip_text import clip_from_transformers
    from tests.interop._unclip_refs import text_encoder, write_tokenizer

    te = text_encoder(seed=21, act="gelu")
    te.save_pretrained(str(tmp_path / "text_encoder"))
    st = tmp_path / "text_encoder" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(st)), tmp_path / "text_encoder" / "pytorch_model.bin")  # the older .bin layout
    st.unlink()
    write_tokenizer(tmp_path / "tokenizer")
    clip = clip_from_transformers(tmp_path / "text_encoder")
    assert clip.model_cfg["quick_gelu"] is False and clip.text_width == HIDDEN
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    ids = tok(PROMPTS, padding="max_length", max_length=L, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        want = te(ids).text_embeds
    close(clip.encode_text(PROMPTS).raw_embed, want)
    cfg = json.loads((tmp_path / "text_encoder" / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        clip_from_transformers(tmp_path / "text_encoder")


def test_offload_moves_one_stage_at_a_time(karlo):
    """enable_offload: every stage waits on the CPU and is moved to the device only while it runs
    (recorded here by the modules' .to calls; on a machine without an accelerator the device is
    the CPU itself, so the images are the same)."""
    _, folder, ours = karlo
    pipe = UnCLIPPipeline.from_diffusers(folder)
    log = []
    stages = {"clip": pipe.clip, "prior": pipe.prior, "decoder": pipe.decoder, "upsampler": pipe.upsamplers[0]}
    for name, m in stages.items():
        orig = m.to

        def to(*a, _orig=orig, _name=name, **k):
            log.append((_name, str(a[0]) if a else str(k.get("device"))))
            return _orig(*a, **k)

        m.__dict__["to"] = to
    pipe.enable_offload("cpu")
    log.clear()
    got = pipe(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
    want = ours(PROMPTS[:1], seed=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
    torch.testing.assert_close(got, want)
    names = [n for n, _ in log]
    # each stage in, then out, before the next one moves: the prompts, the empty prompt (once: cached
    # for the decoder), prior, decoder, upsampler
    assert names == ["clip", "clip", "clip", "clip", "prior", "prior", "decoder", "decoder", "upsampler",
                     "upsampler"], names
    assert pipe.device == torch.device("cpu") and pipe.offload_device == torch.device("cpu")
