"""Continue the recipe's decoder stage past its 5000 steps (a diagnostic, not the recipe): a copy of
the run's stages, the decoder's stage key rewritten for the longer schedule, then resumed from its
last checkpoint (the cosine schedule is stretched to the new length, so the learning rate rises
again at the resume).

    cp -r runs/u16/stages/{clip,clip.json,decoder} /tmp/ft/stages/; rm -r /tmp/ft/stages/decoder/final*
    PYTHONPATH=. python longer/continue_decoder.py /tmp/ft 6500
"""
import json, sys
from dataclasses import replace
from pathlib import Path
from dalle2_fast.recipes.unclip import recipe_from_args, train_unclip, stage_key
steps = int(sys.argv[2])
r = recipe_from_args(0, 1.0, None, None, "grammar", "bpe", 2, 3)
r = replace(r, decoder=replace(r.decoder, steps=steps))
out = Path(sys.argv[1])
(out / "stages/decoder/recipe_key.json").write_text(json.dumps(stage_key(r, "decoder"), indent=2))
train_unclip(r, out, stages=["decoder"])
