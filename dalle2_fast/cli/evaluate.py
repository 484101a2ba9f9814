"""``dalle2-fast eval``: the caption-match report of a text-to-image pipeline (prompts the training
never used, judged by the shapes detector; CLIP zero-shot accuracy; a picture).

    dalle2-fast eval --pipeline runs/unclip/pipeline --out runs/unclip/eval
    dalle2-fast eval --inpaint --out runs/unclip/inpaint      # the inpainting report instead
    dalle2-fast eval --wordings --out runs/unclip/wordings    # per wording family (dalle2_fast/eval/wordings.py)
"""
from __future__ import annotations

from dalle2_fast.cli.checks import check_count, check_out_dir, check_seed_arg


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="the caption-match report of a pipeline (shapes detector, CLIP zero-shot)",
                       description=__doc__)
    e.add_argument("--pipeline", default=None, help="a pipeline directory (default: the weights shipped)")
    e.add_argument("--out", required=True, help="writes caption_match.json and prompts.png here")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--n-single", type=int, default=4, help="images per single-object prompt (30 prompts)")
    e.add_argument("--n-two", type=int, default=2, help="images per two-object prompt (30 prompts)")
    e.add_argument("--inpaint", action="store_true",
                   help="the inpainting report instead (dalle2_fast/eval/inpaint.py): inpaint.json, inpaint.png")
    e.add_argument("--n-cases", type=int, default=50, help="with --inpaint: two-object images to edit")
    e.add_argument("--wordings", action="store_true",
                   help="the wording report instead: per wording family and row (single, two, relation, count) the "
                        "match rate with a 95%% interval; wordings.json, wordings.md, hardest.png")
    e.add_argument("--n-prompts", type=int, default=2, help="with --wordings: prompts per family and scene kind")
    e.add_argument("--n-images", type=int, default=2, help="with --wordings: images per prompt")
    e.set_defaults(func=run)


def run(args) -> int:
    from dalle2_fast.eval.captions import evaluate_pipeline
    from dalle2_fast.pipeline import UnCLIPPipeline, shipped_weights_dir

    check_count("--n-single", args.n_single)
    check_count("--n-two", args.n_two)
    check_count("--n-cases", args.n_cases)
    check_count("--n-prompts", args.n_prompts)
    check_count("--n-images", args.n_images)
    if args.inpaint and args.wordings:
        raise ValueError("--wordings: give --inpaint or --wordings, not both")
    check_seed_arg(args.seed)
    check_out_dir("--out", args.out)
    if args.inpaint:
        from dalle2_fast.eval.inpaint import evaluate_inpainting

        evaluate_inpainting(UnCLIPPipeline.from_pretrained(args.pipeline), args.out, args.n_cases, args.seed)
        return 0
    from dalle2_fast.eval.wordings import read_recipe, training_sentences, wording_report

    # the shipped weights carry their recipe.json too: the reports know their training sentences
    recipe = read_recipe(args.pipeline if args.pipeline is not None else shipped_weights_dir())
    if args.wordings:
        wording_report(UnCLIPPipeline.from_pretrained(args.pipeline), args.out, recipe,
                       args.n_prompts, args.n_images, args.seed)
        return 0
    evaluate_pipeline(UnCLIPPipeline.from_pretrained(args.pipeline), args.out, args.n_single, args.n_two, args.seed,
                      seen=training_sentences(recipe))  # no recipe: the default (legacy) one
    return 0
