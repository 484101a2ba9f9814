"""A batch job takes the pipeline's stage options from the command line (split decoder guidance,
samplers): the images are the pipeline's with the same options and every PNG records them; a
prompt file's line cannot set them (refused, naming the field)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_fast.cli import main
from dalle2_fast.data.images import read_metadata, to_uint8
from dalle2_fast.jobs.prompts import iter_prompt_file
from tests._tiny_pipeline import save_tiny_pipeline


def test_job_passes_stage_options_through(tmp_path):
    from dalle2_fast.pipeline import UnCLIPPipeline

    save_tiny_pipeline(tmp_path / "pipe")
    opts = ["--decoder-sampler", "ddpm", "--upsampler-sampler", "ddpm", "--decoder-image-guidance", "1.5",
            "--decoder-text-guidance", "4"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["sample", "a purple diamond", "-n", "3", "--batch-size", "2", "--seed", "3", "--quiet",
                     "--pipeline", str(tmp_path / "pipe"), "--images-dir", str(tmp_path / "o"), *opts]) == 0
        pipe = UnCLIPPipeline.from_pretrained(tmp_path / "pipe")
        kw = dict(decoder_sampler="ddpm", upsampler_sampler="ddpm", decoder_image_guidance=1.5,
                  decoder_text_guidance=4.0)
        with torch.no_grad():
            ref = [g.image for b in pipe.iter_images("a purple diamond", 3, seed=3, batch_size=2, **kw) for g in b]
            plain = [g.image for b in pipe.iter_images("a purple diamond", 3, seed=3, batch_size=2) for g in b]
    finally:
        torch.set_num_threads(n)
    for k, img in enumerate(ref):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / f"{k:06d}.png")), to_uint8(img))
    assert not all(np.array_equal(to_uint8(a), to_uint8(b)) for a, b in zip(ref, plain))  # the options acted
    meta = read_metadata(tmp_path / "o" / "000001.png")
    assert meta["decoder_sampler"] == "ddpm" and meta["decoder_text_guidance"] == 4.0


def test_a_prompt_line_cannot_set_stage_options(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a red circle", "decoder_sampler": "ddpm"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: unknown field\(s\) \['decoder_sampler'\]"):
        list(iter_prompt_file(f))
