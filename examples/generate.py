#!/usr/bin/env python
"""Generate images with a saved RQTransformerPipeline (a local folder or a Hub id).

Examples::

    python examples/generate.py --model_path quickstart/pipeline --class_labels Sneaker Trouser 3 --num_per_class 4
    python examples/generate.py --model_path rq-ffhq --num_images 8 --top_k 2048 --seed 1   # unconditional
    python examples/generate.py --model_path shapes/pipeline --prompt "a red circle in the top left" \
        "a blue square in the bottom right" --num_per_class 4 --guidance_scale 3             # text-to-image

Each image is written as ``<output_dir>/<index>_<class or prompt>.png`` and all of them as one grid
``<output_dir>/grid.png`` (one row per class or prompt for conditional models); the paths are printed.
"""

from __future__ import annotations

import argparse
import os


def _int_or_float_list(kind):
    def parse(text: str):
        values = [kind(v) for v in text.split(",")]
        return values[0] if len(values) == 1 else values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate images with an RQ-Transformer pipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model_path", required=True, help="Pipeline folder (save_pretrained) or Hub id.")
    parser.add_argument("--class_labels", nargs="*", default=None,
                        help="Class ids or names (see the model card); omit for unconditional models, or give "
                        "`all` for every class.")
    parser.add_argument("--prompt", nargs="+", default=None, help="Captions of a text-conditional model.")
    parser.add_argument("--negative_prompt", default=None,
                        help="Caption of the unconditional branch of guidance (text models; default: empty).")
    parser.add_argument("--num_per_class", type=int, default=1, help="Images per class label or prompt.")
    parser.add_argument("--num_images", type=int, default=4, help="Images of an unconditional model.")
    parser.add_argument("--top_k", type=_int_or_float_list(int), default=None,
                        help="Top-k; one value or one per depth, comma-separated (e.g. 64,32,16,8).")
    parser.add_argument("--top_p", type=_int_or_float_list(float), default=None,
                        help="Top-p; one value or one per depth, comma-separated.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance_scale", type=float, default=1.0,
                        help="Classifier-free guidance scale (class- and text-conditional models).")
    parser.add_argument("--seed", type=int, default=0, help="Seed; image i uses seed + i.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available).")
    parser.add_argument("--output_dir", default="generated")
    return parser


def parse_class_label(text: str) -> int | str:
    """A class id (an integer, negative ones included, so that they are refused as ids) or a class name."""
    try:
        return int(text)
    except ValueError:
        return text


def main(argv=None) -> list[str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_per_class", "num_images"):
        if getattr(args, name) < 1:
            parser.error(f"`--{name}` must be >= 1, got {getattr(args, name)}")
    import torch
    from diffusers.utils import make_image_grid

    from rq_hf import RQTransformerPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = RQTransformerPipeline.from_pretrained(args.model_path).to(device)
    kind = pipe.transformer.config.condition_type
    if (args.prompt is not None) != (kind == "text"):
        raise SystemExit(
            f"--prompt: {args.model_path} is text-conditional; give --prompt."
            if kind == "text"
            else f"--prompt: {args.model_path} is not text-conditional ({kind}); drop --prompt."
        )
    condition = {}
    if kind == "text":
        labels = [p for p in args.prompt for _ in range(args.num_per_class)]
        num_columns, count = args.num_per_class, len(labels)
        condition = {"prompt": args.prompt, "num_images_per_prompt": args.num_per_class,
                     "negative_prompt": args.negative_prompt}
    elif pipe.transformer.config.num_classes is None:
        if args.class_labels:
            raise ValueError(f"`--class_labels`: {args.model_path} is unconditional; use --num_images instead.")
        labels, num_columns = None, args.num_images
        count = args.num_images
    else:
        if not args.class_labels:
            raise ValueError(f"`--class_labels` is required: {args.model_path} is class-conditional; known classes: "
                             f"{pipe.id2label}")
        requested = list(pipe.id2label) if args.class_labels == ["all"] else args.class_labels
        labels = [parse_class_label(str(v)) for v in requested for _ in range(args.num_per_class)]
        num_columns, count = args.num_per_class, len(labels)
        condition = {"class_labels": labels}
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(count)]
    images = pipe(
        **condition,
        num_images=None if labels is not None else count,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        guidance_scale=args.guidance_scale,
        generator=generators,
    ).images
    os.makedirs(args.output_dir, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        tag = "" if labels is None else "_" + "".join(c if c.isalnum() else "-" for c in str(labels[i]))[:40]
        paths.append(os.path.join(args.output_dir, f"{i:03d}{tag}.png"))
        image.save(paths[-1])
    grid_path = os.path.join(args.output_dir, "grid.png")
    make_image_grid(images, rows=len(images) // num_columns, cols=num_columns).save(grid_path)
    print(f"wrote {len(paths)} images to {args.output_dir}/ and the grid {grid_path}")
    return paths + [grid_path]


if __name__ == "__main__":
    from rq_hf.training.script_utils import run_cli

    run_cli(main, build_parser)  # bad flags or inputs: a usage line and the message, no traceback
