"""The LAION prior as the prior of an unCLIP pipeline (its sample() meets the Prior protocol):
a tiny CLIP whose text width equals its embedding width (as ViT-L/14's 768 does), a random
LaionDiffusionPrior and a tiny UnCLIPDecoder of the same CLIP; saved as a pipeline directory
and sampled by ``dalle2-fast sample --pipeline``: the same images as the Python call."""
import json

import torch

from dalle2_fast.cli import main
from dalle2_fast.data.images import read_metadata
from dalle2_fast.diffusion import DiffusionConfig
from dalle2_fast.models.clip import ClipAdapter, ClipConfig, WordTokenizer
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
from dalle2_fast.models.prior.laion import LaionDiffusionPrior, LaionPriorConfig, laion_diffusion_config
from dalle2_fast.models.unet_configs import UNetConfig
from dalle2_fast.pipeline import UnCLIPPipeline
from tests._toy_captions import PROMPTS


def _pipeline():
    torch.manual_seed(0)
    tok = WordTokenizer.fit(PROMPTS, 128, 8)
    oc = {"model_cfg": {"embed_dim": 32, "quick_gelu": True,
                        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                        "text_cfg": {"context_length": 8, "vocab_size": 128, "width": 32, "heads": 2, "layers": 1}},
          "preprocess_cfg": {}}
    clip = ClipAdapter(ClipConfig(model_name="tiny-vitl-like", open_clip=json.dumps(oc),
                                  tokenizer=json.dumps(tok.to_dict()))).eval()
    prior = LaionDiffusionPrior(LaionPriorConfig(dim=32, depth=1, heads=2, dim_head=16, max_text_len=8,
                                                 num_timesteps=20, sample_timesteps=4,
                                                 diffusion=laion_diffusion_config(20))).eval()
    unet = UNetConfig(image_size=8, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_head_channels=16, learn_sigma=True, use_scale_shift_norm=True,
                      resblock_updown=True, cond_dim=32, context_dim=32, cond_tokens=2)
    decoder = UnCLIPDecoder(DecoderConfig(unet=unet, clip_dim=32, text_width=32, text_len=8,
                                          diffusion=DiffusionConfig(schedule="cosine", num_timesteps=20,
                                                                    mean_type="eps", var_type="learned_range",
                                                                    loss="hybrid"))).eval()
    return UnCLIPPipeline(clip, prior, decoder, [], defaults=dict(prior_steps=4, decoder_steps=3, prior_guidance=2.0))


def test_laion_prior_in_a_pipeline_and_the_cli(tmp_path):
    pipe = _pipeline()
    want = pipe(["a red circle", "a blue square"], num_images_per_prompt=1, seed=5)
    assert want.shape == (2, 3, 8, 8)
    pipe.save_pretrained(tmp_path / "pipe")
    back = UnCLIPPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(back.prior, LaionDiffusionPrior)
    torch.testing.assert_close(back(["a red circle", "a blue square"], num_images_per_prompt=1, seed=5), want,
                               rtol=0, atol=1e-6)
    out = tmp_path / "grid.png"
    assert main(["sample", "a red circle", "a blue square", "-n", "1", "--seed", "5", "--pipeline",
                 str(tmp_path / "pipe"), "-o", str(out), "--quiet"]) == 0
    assert out.is_file() and read_metadata(out)
