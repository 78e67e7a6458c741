#!/usr/bin/env python
"""Text-to-image at CPU scale: coloured shapes drawn here, captions in varied words, both stages trained with the
rq-hf scripts, prompt adherence measured per attribute.

    python examples/text_to_image_shapes.py --output_dir shapes

1. draws ``--num_train_images`` 32x32 RGB images, each one shape (circle, square, triangle) in one colour (red,
   green, blue, yellow) in one quadrant (top/bottom left/right), with a caption naming the three attributes in
   one of several wordings ("a crimson disc in the upper left", "bottom right: a golden box", "there is a
   triangle coloured cobalt at the top-right corner", ...); the combinations of ``HELD_OUT`` are never drawn
   for training. The data are a ``datasets`` folder (``image``, ``text``) in ``output_dir/data``;
2. trains an RQ-VAE with ``examples/train_rqvae.py`` (the quickstart's architecture for RGB: channels
   16/32/64, 8x8x4 codes from 256 shared codes; ``--rqvae_steps``);
3. encodes the images once with ``examples/extract_codes.py`` (the captions travel in the codes dataset's
   ``text`` column);
4. trains a text-conditional RQ-Transformer with ``examples/train_rq_transformer.py --caption_column text``
   (a BPE tokenizer trained on the captions, ``--max_text_length`` 16, caption dropout 0.1, hidden 128, 4
   spatial + 1 depth layers; ``--transformer_steps``); the pipeline with its tokenizer is saved in
   ``output_dir/pipeline``;
5. reloads it and measures prompt adherence: for every colour x shape x quadrant (48 prompts, worded at random),
   ``--images_per_prompt`` samples at each ``--guidance_scales`` value are checked by a pixel rule per attribute
   (colour: nearest reference colour of the mean foreground pixel; quadrant: foreground centroid; shape: the
   foreground's share of its bounding box), beside the rate of the same rule on fresh real images and on their
   RQ-VAE reconstructions (the ceiling), and apart for the held-out combinations;
6. writes ``samples_guidance_<s>.png`` (one row per prompt of ``GRID_PROMPTS``, ``--grid_columns`` samples)
   and ``metrics.json``, and prints the adherence table.

``--quick`` runs the same steps in seconds on a few images (a smoke test, not a model). Timings in the printed
summary are wall-clock on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import time

import numpy as np

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
SIZE = 32

COLOURS = {"red": (225, 35, 35), "green": (40, 190, 60), "blue": (45, 85, 235), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COLOUR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green", "emerald"),
    "blue": ("blue", "cobalt"),
    "yellow": ("yellow", "golden"),
}
SHAPE_WORDS = {"circle": ("circle", "disc", "round dot"), "square": ("square", "box", "block"),
               "triangle": ("triangle", "triangular shape")}
QUADRANT_WORDS = {
    "top left": ("top left", "upper left", "top-left corner"),
    "top right": ("top right", "upper right", "top-right corner"),
    "bottom left": ("bottom left", "lower left", "bottom-left corner"),
    "bottom right": ("bottom right", "lower right", "bottom-right corner"),
}
TEMPLATES = (
    "a {colour} {shape} in the {where}",
    "{where}: a {colour} {shape}",
    "there is a {shape} coloured {colour} at the {where}",
    "{colour} {shape}, {where}",
)
#: Combinations never drawn for training (each colour, shape and quadrant once or more): compositional test.
HELD_OUT = (
    ("green", "triangle", "top left"),
    ("red", "square", "bottom right"),
    ("blue", "circle", "top right"),
    ("yellow", "square", "bottom left"),
)
#: Rows of the sample grids (canonical wording); the last two are held-out combinations.
GRID_PROMPTS = (
    "a red circle in the top left",
    "a green square in the bottom right",
    "a blue triangle in the top right",
    "a yellow circle in the bottom left",
    "a red triangle in the bottom left",
    "a blue square in the top left",
    "a green triangle in the top left",
    "a red square in the bottom right",
)
ATTRIBUTES = ("colour", "shape", "quadrant")


# ------------------------------------------------------------------------------------------------ data


def combinations(include_held_out: bool = True) -> list[tuple[str, str, str]]:
    """All colour x shape x quadrant triples (optionally without ``HELD_OUT``)."""
    triples = [(c, s, q) for c in COLOURS for s in SHAPES for q in QUADRANTS]
    return triples if include_held_out else [t for t in triples if t not in HELD_OUT]


def caption(colour: str, shape: str, quadrant: str, rng: np.random.Generator) -> str:
    """A caption naming the three attributes, in a wording drawn with ``rng``."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    text = template.format(
        colour=pick(COLOUR_WORDS[colour]), shape=pick(SHAPE_WORDS[shape]), where=pick(QUADRANT_WORDS[quadrant])
    )
    text = text.replace("a emerald", "an emerald")
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def draw(colour: str, shape: str, quadrant: str, rng: np.random.Generator):
    """A 32x32 RGB PIL image: one shape, half-size 4 to 6 pixels, centred in its quadrant +- 2 pixels."""
    import PIL.Image
    import PIL.ImageDraw

    image = PIL.Image.new("RGB", (SIZE, SIZE))
    cx = (8 if "left" in quadrant else 24) + int(rng.integers(-2, 3))
    cy = (8 if "top" in quadrant else 24) + int(rng.integers(-2, 3))
    r = int(rng.integers(4, 7))
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    pen = PIL.ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_dataset(num_images: int, seed: int, include_held_out: bool = False):
    """A ``datasets.Dataset`` (``image``, ``text``) plus the (colour, shape, quadrant) of each row."""
    import datasets

    rng = np.random.default_rng(seed)
    triples = combinations(include_held_out)
    rows = [triples[i] for i in rng.integers(len(triples), size=num_images)]
    images = [draw(*t, rng) for t in rows]
    texts = [caption(*t, rng) for t in rows]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "text": texts}, features=features), rows


# ------------------------------------------------------------------------------------------------ checks


def check_attributes(image: np.ndarray) -> dict[str, str | None]:
    """The colour, shape and quadrant a pixel rule reads from one (32, 32, 3) image in [0, 1].

    Foreground: pixels whose brightest channel exceeds 0.35. Colour: the reference colour nearest to the
    mean foreground pixel; quadrant: of the foreground centroid; shape: the share of the foreground's
    bounding box it fills (square about 1, circle about 0.8, triangle about 0.5). None when nothing is drawn.
    """
    mask = image.max(axis=-1) > 0.35
    if mask.sum() < 4:
        return dict.fromkeys(ATTRIBUTES)
    ys, xs = np.nonzero(mask)
    mean = image[mask].mean(axis=0) * 255
    colour = min(COLOURS, key=lambda name: float(np.sum((mean - np.array(COLOURS[name])) ** 2)))
    quadrant = ("top " if ys.mean() < SIZE / 2 else "bottom ") + ("left" if xs.mean() < SIZE / 2 else "right")
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    return {"colour": colour, "shape": shape, "quadrant": quadrant}


def adherence(images: np.ndarray, targets: list[tuple[str, str, str]]) -> dict[str, float]:
    """Share of images whose checked attributes match their targets: per attribute and all three."""
    hits = {name: 0 for name in ATTRIBUTES + ("all",)}
    for image, target in zip(images, targets):
        found = check_attributes(image)
        right = [found[name] == value for name, value in zip(ATTRIBUTES, target)]
        for name, ok in zip(ATTRIBUTES, right):
            hits[name] += ok
        hits["all"] += all(right)
    return {name: count / len(targets) for name, count in hits.items()}


# ------------------------------------------------------------------------------------------------ training


def example(name: str) -> dict:
    """The globals of ``examples/<name>.py`` (the examples folder is not a package)."""
    return runpy.run_path(os.path.join(EXAMPLES, f"{name}.py"))


def build_parser() -> argparse.ArgumentParser:
    """The demonstration's flags."""
    parser = argparse.ArgumentParser(
        description="Train a text-to-image RQ-Transformer on captioned coloured shapes and measure prompt adherence.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", type=str, default="shapes", help="Everything is written here.")
    parser.add_argument("--num_train_images", type=int, default=20000, help="Captioned images drawn for training.")
    parser.add_argument("--rqvae_steps", type=int, default=600, help="RQ-VAE training steps (batch 64).")
    parser.add_argument("--transformer_steps", type=int, default=1000, help="Transformer training steps (batch 64).")
    parser.add_argument("--images_per_prompt", type=int, default=4, help="Samples per prompt for adherence.")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--grid_columns", type=int, default=8, help="Samples per row of the grids.")
    parser.add_argument("--quick", action="store_true", help="Smoke mode: a few steps on a few images (seconds).")
    parser.add_argument("--evaluate_only", action="store_true",
                        help="Skip data and training: measure the pipeline already in output_dir/pipeline.")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def rqvae_argv(args, data_dir: str, config_path: str, output_dir: str) -> list[str]:
    steps = 2 if args.quick else args.rqvae_steps
    return [
        "--dataset_name", data_dir, "--model_config_name_or_path", config_path, "--output_dir", output_dir,
        "--resolution", str(SIZE), "--train_batch_size", "64", "--max_train_steps", str(steps),
        "--learning_rate", "1e-3", "--lr_scheduler", "constant", "--disc_weight", "0",
        "--checkpointing_steps", str(max(steps // 2, 1)), "--checkpoints_total_limit", "1",
        "--validation_steps", str(steps if args.quick else steps // 2), "--report_to", "none",
        "--seed", str(args.seed),
    ]


def transformer_argv(args, vqvae_dir: str, codes_dir: str, output_dir: str) -> list[str]:
    steps = 2 if args.quick else args.transformer_steps
    return [
        "--vqvae_model_name_or_path", vqvae_dir, "--codes_dataset", codes_dir, "--caption_column", "text",
        "--output_dir", output_dir, "--text_vocab_size", "512", "--max_text_length", "16",
        "--caption_dropout_prob", "0.1", "--hidden_size", "128", "--num_spatial_layers", "4",
        "--num_depth_layers", "1", "--num_attention_heads", "4", "--train_batch_size", "64",
        "--max_train_steps", str(steps), "--learning_rate", "1e-3", "--lr_warmup_steps", str(min(50, steps // 10)),
        "--checkpointing_steps", str(max(steps // 2, 1)), "--checkpoints_total_limit", "1",
        "--validation_steps", str(steps if args.quick else steps // 2),
        "--max_validation_samples", "64" if args.quick else "500",
        "--guidance_scale", "3.0", "--num_validation_images", "1" if args.quick else "4",
        "--validation_prompts", *GRID_PROMPTS[:4], "--report_to", "none", "--seed", str(args.seed),
    ]


def sample(pipe, prompts: list[str], per_prompt: int, guidance_scale: float, seed: int) -> np.ndarray:
    """(len(prompts) * per_prompt, 32, 32, 3) samples in [0, 1], in batches of at most 64 images."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    chunks, step = [], max(1, 64 // per_prompt)
    for start in range(0, len(prompts), step):
        chunks.append(pipe(prompt=prompts[start:start + step], num_images_per_prompt=per_prompt,
                           guidance_scale=guidance_scale, generator=generator, output_type="np").images)
    return np.concatenate(chunks)


def train(args, paths: dict[str, str]) -> dict[str, float]:
    """Draw the data, train both stages; returns the wall-clock minutes of each part."""
    from rq_hf.training.script_utils import run_script

    timings = {}
    dataset, _ = make_dataset(128 if args.quick else args.num_train_images, seed=args.seed)
    dataset.save_to_disk(paths["data"])
    train_rqvae = example("train_rqvae")
    config = {**train_rqvae["TINY_CONFIG"], "in_channels": 3, "out_channels": 3}
    config_path = os.path.join(args.output_dir, "rqvae_config.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)

    start = time.perf_counter()
    run_script(os.path.join(EXAMPLES, "train_rqvae.py"), rqvae_argv(args, paths["data"], config_path, paths["rqvae"]))
    timings["rqvae_minutes"] = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    example("extract_codes")["main"](["--vqvae_model_name_or_path", paths["rqvae"], "--dataset_name", paths["data"],
                                      "--resolution", str(SIZE), "--output_dir", paths["codes"]])
    timings["extract_minutes"] = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    run_script(os.path.join(EXAMPLES, "train_rq_transformer.py"),
               transformer_argv(args, paths["rqvae"], paths["codes"], paths["pipeline"]))
    timings["transformer_minutes"] = (time.perf_counter() - start) / 60
    return timings


def main(argv: list[str] | None = None) -> dict:
    """Run the demonstration; returns the metrics (also written to ``output_dir/metrics.json``)."""
    args = build_parser().parse_args(argv)
    for name in ("num_train_images", "rqvae_steps", "transformer_steps", "images_per_prompt", "grid_columns"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}")
    import torch

    save_grid = example("quickstart")["save_grid"]
    out = args.output_dir
    paths = {name: os.path.join(out, name) for name in ("data", "rqvae", "codes", "pipeline")}
    os.makedirs(out, exist_ok=True)
    timings = {}

    if not args.evaluate_only:
        timings.update(train(args, paths))

    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(paths["pipeline"])
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(args.seed + 1)
    triples = combinations()[:4] if args.quick else combinations()
    per_prompt = 1 if args.quick else args.images_per_prompt
    prompts = [caption(*t, rng) for t in triples]
    targets = [t for t in triples for _ in range(per_prompt)]
    held_out = np.array([t in HELD_OUT for t in targets])

    # the checks on real images and on their RQ-VAE reconstructions: the ceiling of the rule and of the pipeline
    real = np.stack([np.asarray(draw(*t, rng), dtype=np.float32) / 255 for t in targets])
    with torch.no_grad():
        pixels = torch.from_numpy(real).permute(0, 3, 1, 2) * 2 - 1
        recon = pipe.vqvae.decode_codes(pipe.vqvae.encode(pixels).codes).sample.clamp(-1, 1)
    recon = ((recon + 1) / 2).permute(0, 2, 3, 1).numpy()
    metrics = {"real images": adherence(real, targets), "reconstructions": adherence(recon, targets)}
    timings["sampling_minutes"] = {}
    for scale in args.guidance_scales:
        start = time.perf_counter()
        images = sample(pipe, prompts, per_prompt, scale, args.seed)
        timings["sampling_minutes"][str(scale)] = (time.perf_counter() - start) / 60
        metrics[f"samples, guidance {scale:g}"] = adherence(images, targets)
        if held_out.any():
            metrics[f"samples, guidance {scale:g}, held-out combinations"] = adherence(
                images[held_out], [t for t, h in zip(targets, held_out) if h]
            )
        grid_prompts = list(GRID_PROMPTS[:2] if args.quick else GRID_PROMPTS)
        cols = 1 if args.quick else args.grid_columns
        grid = pipe(prompt=grid_prompts, num_images_per_prompt=cols, guidance_scale=scale,
                    generator=torch.Generator().manual_seed(args.seed)).images
        save_grid(grid, rows=len(grid_prompts), cols=cols,
                             path=os.path.join(out, f"samples_guidance_{scale:g}.png"))

    result = {
        "adherence": metrics,
        "num_prompts": len(prompts),
        "images_per_prompt": per_prompt,
        "held_out_combinations": [list(t) for t in HELD_OUT],
        "grid_prompts": list(GRID_PROMPTS),
        "timings": timings,
        "steps": None if args.evaluate_only else {"rqvae": 2 if args.quick else args.rqvae_steps,
                                                  "transformer": 2 if args.quick else args.transformer_steps},
    }
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"\nPipeline (with its tokenizer): {paths['pipeline']}")
    print("| images | colour | shape | quadrant | all three |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in metrics.items():
        print(f"| {name} | " + " | ".join(f"{100 * values[k]:.1f}%" for k in ATTRIBUTES + ("all",)) + " |")
    if not args.evaluate_only:
        print(f"Training time: RQ-VAE {timings['rqvae_minutes']:.1f} min, "
              f"transformer {timings['transformer_minutes']:.1f} min")
    return result


if __name__ == "__main__":
    main()
