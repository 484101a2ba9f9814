"""diffusers' PriorTransformer (Karlo, Kandinsky 2.1 / 2.2, Stable unCLIP) -> our DiffusionPrior:
the same outputs as the reference to 1e-5 for every architecture option, the sampler's steps equal
to UnCLIPScheduler's (float64 tables, injected noise), and clear refusals."""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from dalle2_fast.checkpoint import CheckpointError  # noqa: E402
from dalle2_fast.models.clip import TextEncoding  # noqa: E402
from dalle2_fast.models.prior import DiffusionPrior  # noqa: E402
from dalle2_fast.diffusion.respace import space_timesteps  # noqa: E402
from tests.interop._unclip_refs import (D, Recorder, close, double_tables, prior, scheduler_step,  # noqa: E402
                                        schedulers, text_inputs)

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    # Karlo's prior (diffusers' defaults): query ('prd') token, SiLU time MLP, no extra norms
    "karlo": {},
    # the options Kandinsky / Shap-E-style configs switch: LayerNorm on the input sequence and on z_t,
    # a GELU time MLP of another width
    "norms_gelu": dict(norm_in_type="layer", embedding_proj_norm_type="layer", time_embed_act_fn="gelu",
                       time_embed_dim=48),
    # no query token: the output is read at the noised z_i token
    "no_prd": dict(added_emb_type=None, additional_embeddings=3),
    # Kandinsky 2.2's CLIP dimension (ViT-bigG-14: 1280), narrow transformer
    "dim1280": dict(embedding_dim=1280),
}


def _save(ref, tmp_path, scheduler=None):
    ref.save_pretrained(str(tmp_path / "prior"))
    if scheduler is not None:
        scheduler.save_pretrained(str(tmp_path / "prior_scheduler"))
    return tmp_path / "prior"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_diffusers(tmp_path, name):
    ref = prior(seed=11, **VARIANTS[name])
    ours = DiffusionPrior.from_diffusers(_save(ref, tmp_path))
    assert ours.config.query_token == (name != "no_prd")
    b, dim = 4, VARIANTS[name].get("embedding_dim", D)
    assert ours.config.clip_dim == dim
    tok, mask, emb = text_inputs(b, width=dim, dim=dim)
    x = torch.randn(b, dim) * 2
    for t in (torch.tensor([0, 999, 500, 1]), torch.tensor([999] * b)):  # the first and the last step
        with torch.no_grad():
            want = ref(x, t, proj_embedding=emb, encoder_hidden_states=tok, attention_mask=mask)
            got = ours(x, t, tok, mask, emb)
        close(got, want.predicted_image_embedding.reshape(got.shape))  # (B, 1, D) without a query token
    # clip_mean / clip_std carried as buffers: the post-processing of the latents
    torch.testing.assert_close(ours.from_latent(x), ref.post_process_latents(x), rtol=1e-6, atol=1e-6)


def test_sampler_steps_match_unclip_scheduler(tmp_path):
    """One step at a time along our own trajectory: from our x_k, diffusers' UnCLIPScheduler (float64
    tables) with the reference network, CFG against the empty prompt's rows and our noise injected
    lands on our x_(k+1); the x0 clamp (clip_sample_range 5) is active on the way."""
    ref = prior(seed=12)
    with torch.no_grad():
        ref.clip_std.mul_(0.05)  # normalised targets far outside [-5, 5]: the clamp must bite
    sched = schedulers()[0]
    ours = DiffusionPrior.from_diffusers(_save(ref, tmp_path, sched))
    assert ours.config.x0_clamp == 5.0 and ours.config.sampling.spacing == "linspace"
    b, steps, g = 3, 6, 4.0
    tok, mask, emb = text_inputs(b)
    ntok, nmask, nemb = text_inputs(1, seed=9)
    text, null = TextEncoding(tok, mask, emb, raw_embed=emb), TextEncoding(ntok, nmask, nemb, raw_embed=nemb)
    with Recorder() as rec:
        final = ours.sample_candidates(text, [3, 4, 5], steps=steps, guidance=g, null_text=null)
    xs = [rec.draws[0]] + rec.xs  # x_T, then x after each step
    sched.set_timesteps(steps)
    double_tables(sched)
    ts = sched.timesteps.tolist()
    assert ts == ours.diffusion.timestep_map[space_timesteps(1000, f"linspace{steps}")].flip(0).tolist()
    clamped = 0
    for k, t in enumerate(ts):
        with torch.no_grad():
            out = ref(torch.cat([xs[k], xs[k]]), t, proj_embedding=torch.cat([nemb.expand(b, -1), emb]),
                      encoder_hidden_states=torch.cat([ntok.expand(b, -1, -1), tok]),
                      attention_mask=torch.cat([nmask.expand(b, -1), mask])).predicted_image_embedding
        u, c = out.double().chunk(2)
        pred = u + g * (c - u)
        clamped += int((pred.abs() > 5).sum())
        want = scheduler_step(sched, pred, t, xs[k].double(), ts[k + 1] if k + 1 < len(ts) else None,
                              rec.draws[k + 1].double())
        close(xs[k + 1], want, tol=2e-5)
    assert clamped > 0, "the clamp never applied: the test would not see a missing x0_clamp"
    close(final[0], ref.post_process_latents(xs[-1]), tol=1e-5)


def test_prior_sample_runs_with_the_empty_prompt_and_refuses_without(tmp_path):
    ours = DiffusionPrior.from_diffusers(_save(prior(seed=13), tmp_path, schedulers()[0]))
    tok, mask, emb = text_inputs(2)
    text = TextEncoding(tok, mask, emb / emb.norm(dim=-1, keepdim=True), raw_embed=emb)
    with pytest.raises(ValueError, match="null_text"):
        ours.sample(text, [0, 1], steps=3, guidance=4.0)
    null = TextEncoding(*text_inputs(1, seed=3)[:2], emb[:1], raw_embed=emb[:1])
    z = ours.sample(text, [0, 1], steps=3, guidance=4.0, null_text=null)
    assert z.shape == (2, D) and torch.isfinite(z).all()
    assert not torch.allclose(z.norm(dim=-1), torch.ones(2))  # raw embeddings, not unit-norm
    again = ours.sample(TextEncoding(tok[1:], mask[1:], text.embed[1:], raw_embed=emb[1:]), [1], steps=3,
                        guidance=4.0, null_text=null)
    torch.testing.assert_close(again, z[1:], atol=1e-5, rtol=1e-5)  # seed rule: independent of the batch


def test_pipeline_folder_and_save_load_round_trip(tmp_path):
    ref, sched = prior(seed=14), schedulers()[0]
    _save(ref, tmp_path, sched)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPriorPipeline",
                                                           "prior": ["diffusers", "PriorTransformer"]}))
    ours = DiffusionPrior.from_diffusers(tmp_path)  # a pipeline folder: prior/ + prior_scheduler/
    back = DiffusionPrior.from_pretrained(ours.save_pretrained(tmp_path / "ours"))
    assert back.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_bfloat16_loading(tmp_path):
    ours = DiffusionPrior.from_diffusers(_save(prior(seed=15), tmp_path), dtype=torch.bfloat16)
    assert ours.x_proj.weight.dtype == torch.bfloat16 and ours.clip_std.dtype == torch.float32
    tok, mask, emb = text_inputs(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(torch.randn(2, D), torch.tensor([5, 900]), tok, mask, emb)
    assert torch.isfinite(out.float()).all()


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _save(prior(seed=16), tmp_path)
    f = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd.pop("transformer_blocks.1.attn1.to_k.weight")
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.1\.attn1\.to_k\.weight"):
        DiffusionPrior.from_diffusers(folder)
    sd = load_file(str(f))
    sd["transformer_blocks.1.attn1.to_k.weight"] = torch.zeros(32, 31)  # a fused part: caught by the transform
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"mis-shaped.*to_k\.weight \(32, 31\)"):
        DiffusionPrior.from_diffusers(folder)
    sd["transformer_blocks.1.attn1.to_k.weight"] = torch.zeros(32, 32)
    sd["proj_in.weight"] = torch.zeros(32, D + 1)  # a renamed tensor: caught against our model
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"mis-shaped.*proj_in\.weight: \(32, 33\), expected \(32, 32\)"):
        DiffusionPrior.from_diffusers(folder)
    sd["proj_in.weight"] = torch.zeros(32, D)
    sd["transformer_blocks.0.attn2.to_q.weight"] = torch.zeros(32, 32)  # an unknown tensor: a layout we don't read
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=r"does not understand.*attn2\.to_q\.weight"):
        DiffusionPrior.from_diffusers(folder)


def test_unknown_layouts_say_what_was_expected(tmp_path):
    with pytest.raises(CheckpointError, match="PriorTransformer folder"):
        DiffusionPrior.from_diffusers(tmp_path)
    folder = _save(prior(seed=17), tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder_hid_proj_type"] = None
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="encoder_hid_proj_type"):
        DiffusionPrior.from_diffusers(folder)
