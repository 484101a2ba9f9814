"""A Karlo-architecture diffusers ``UnCLIPPipeline`` at reduced width with random weights, saved
in diffusers' folder layout: the shared input of the ``unclip-peers`` benchmark (the same weights
go into ours through ``UnCLIPPipeline.from_diffusers``). Karlo v1 alpha's own sizes, from
diffusers' conversion script, are in the comments of :data:`SIZES`."""
from __future__ import annotations

from pathlib import Path

import torch

# reduced Karlo: (ours, Karlo v1 alpha)
SIZES = {
    "full": dict(text_width=256, text_layers=4, clip_dim=256,            # (768, 12, 768)
                 prior_heads=4, prior_head_dim=64, prior_layers=4,       # (32, 64, 20)
                 dec_channels=(64, 128, 192, 256), dec_layers=2, dec_head_dim=32, dec_ctx=512,  # ((320..1280), 3, 64, 1536)
                 sr_channels=(32, 64, 96, 128), sr_layers=2, small=64, large=256),  # ((320..1280), 3, 64, 256)
    "quick": dict(text_width=64, text_layers=2, clip_dim=64, prior_heads=2, prior_head_dim=32, prior_layers=2,
                  dec_channels=(32, 64), dec_layers=1, dec_head_dim=32, dec_ctx=64, sr_channels=(32, 64),
                  sr_layers=1, small=16, large=32),
}

def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-zero weights at O(1) activations (diffusers zero-initialises some layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or "mask" in name or "position_ids" in name:
                continue
            r = torch.randn(p.shape, generator=g)
            if name.endswith("clip_std"):
                p.copy_(0.5 + r.abs())
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            elif p.dim() <= 1 or name.endswith(("embedding", "embeddings")):
                p.copy_(0.1 * r)
            else:
                p.copy_(r / max(1, p[0].numel()) ** 0.5)
    return module.eval()


def _tokenizer(folder: Path):
    import json

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    enc = dict(st.encoder)
    enc["<|startoftext|>"], enc["<|endoftext|>"] = enc.pop("<start_of_text>"), enc.pop("<end_of_text>")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(enc))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), pad_token="!", model_max_length=77)


def build_reference(folder: Path, quick: bool = False):
    """diffusers' UnCLIPPipeline at :data:`SIZES`, random weights, saved to ``folder``."""
    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    s = SIZES["quick" if quick else "full"]
    D, W = s["clip_dim"], s["text_width"]
    te = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=W, intermediate_size=4 * W, num_hidden_layers=s["text_layers"],
        num_attention_heads=max(1, W // 64), max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=D))
    prior = PriorTransformer(num_attention_heads=s["prior_heads"], attention_head_dim=s["prior_head_dim"],
                             num_layers=s["prior_layers"], embedding_dim=D, num_embeddings=77, additional_embeddings=4)
    mc = s["dec_channels"][0]
    n = len(s["dec_channels"])
    tp = UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=D, time_embed_dim=4 * mc,
                             cross_attention_dim=s["dec_ctx"])
    dec = UNet2DConditionModel(
        sample_size=s["small"], in_channels=3, out_channels=6, layers_per_block=s["dec_layers"],
        block_out_channels=s["dec_channels"],
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (n - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=s["dec_ctx"],
        attention_head_dim=s["dec_head_dim"], resnet_time_scale_shift="scale_shift", class_embed_type="identity")
    ns = len(s["sr_channels"])
    sr = [UNet2DModel(sample_size=s["large"], in_channels=6, out_channels=3, layers_per_block=s["sr_layers"],
                      block_out_channels=s["sr_channels"], down_block_types=("ResnetDownsampleBlock2D",) * ns,
                      up_block_types=("ResnetUpsampleBlock2D",) * ns, add_attention=False) for _ in range(2)]
    for i, m in enumerate([te, prior, tp, dec, *sr]):
        _randomize(m, i)
    pipe = UnCLIPPipeline(
        prior=prior, decoder=dec, text_encoder=te, tokenizer=_tokenizer(folder / "_tokenizer_src"), text_proj=tp,
        super_res_first=sr[0], super_res_last=sr[1],
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(folder))
    return pipe


__all__ = ["SIZES", "build_reference"]
