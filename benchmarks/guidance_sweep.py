"""Class accuracy of a class-conditional Fashion-MNIST pipeline's samples against guidance, its schedule and the
sampling filters, judged by the classifier shipped with rq_hf (``rq_hf.evaluation.fashion_mnist_classifier``).

For each setting: ``--num_samples`` samples (classes 0..9 in turn, one seed), the fraction the classifier
assigns to the requested class, overall and per class; beside them the classifier's accuracy on the real test
images and on their reconstructions by the pipeline's RQ-VAE (the ceiling for samples: a sample can at best be
as recognisable as a reconstruction). Writes ``guidance_sweep.json``, ``guidance_sweep.md`` and one sample grid
per setting (``grid_<setting>.png``: one row per class) into ``--output_dir``.

    python benchmarks/guidance_sweep.py --model_path quickstart/pipeline --guidance_scales 1,2,3 \\
        --schedules constant,linear --output_dir docs/quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def optional_numbers(text: str, cast) -> tuple[Any, ...]:
    return tuple(None if v.strip() == "none" else cast(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", required=True, help="A pipeline folder (save_pretrained).")
    parser.add_argument("--guidance_scales", type=floats, default=(1.0, 2.0, 3.0))
    parser.add_argument("--schedules", default="constant", help="Comma-separated: constant, linear, cosine.")
    parser.add_argument("--top_ks", default="none", help="Comma-separated top-k values ('none': all codes).")
    parser.add_argument("--top_ps", default="none", help="Comma-separated top-p values ('none': off).")
    parser.add_argument("--temperatures", type=floats, default=(1.0,))
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--num_test_images", type=int, default=10000, help="Real test images (and reconstructions).")
    parser.add_argument("--samples_per_class_in_grid", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    args.schedules = tuple(s.strip() for s in args.schedules.split(",") if s.strip())
    args.top_ks = optional_numbers(args.top_ks, int)
    args.top_ps = optional_numbers(args.top_ps, float)
    if args.num_samples < 10 or args.num_test_images < 1:
        parser.error(f"--num_samples must be >= 10 and --num_test_images >= 1, got {args.num_samples}, "
                     f"{args.num_test_images}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from rq_hf import RQTransformerPipeline
    from rq_hf.data import FASHION_MNIST_CLASSES
    from rq_hf.evaluation import generate_images, predict
    from rq_hf.evaluation.fashion_mnist_classifier import fashion_mnist_tensors, load_fashion_mnist_classifier

    started = time.perf_counter()
    pipe = RQTransformerPipeline.from_pretrained(args.model_path)
    pipe.set_progress_bar_config(disable=True)
    classifier = load_fashion_mnist_classifier()
    test = fashion_mnist_tensors("test")
    images, labels = test.images[: args.num_test_images], test.labels[: args.num_test_images]
    with torch.no_grad():
        reconstructions = torch.cat([pipe.vqvae.decode_codes(pipe.vqvae.encode(b).codes).sample.clamp(-1, 1)
                                     for b in images.split(250)])
    report: dict[str, Any] = {
        "model_path": args.model_path, "num_samples": args.num_samples, "num_test_images": len(labels),
        "accuracy_real": float((predict(classifier, images) == labels).double().mean()),
        "accuracy_reconstructions": float((predict(classifier, reconstructions) == labels).double().mean()),
        "settings": [],
    }
    os.makedirs(args.output_dir, exist_ok=True)
    for scale in args.guidance_scales:
        for schedule in args.schedules if scale != 1.0 else args.schedules[:1]:
            for top_k in args.top_ks:
                for top_p in args.top_ps:
                    for temperature in args.temperatures:
                        sampling = {"guidance_scale": scale, "guidance_schedule": schedule, "top_k": top_k,
                                    "top_p": top_p, "temperature": temperature}
                        start = time.perf_counter()
                        samples = generate_images(pipe, args.num_samples, batch_size=100,
                                                  generator=torch.Generator().manual_seed(args.seed), **sampling)
                        hits = predict(classifier, samples.images) == samples.labels
                        per_class = [float(hits[samples.labels == c].double().mean()) for c in range(10)]
                        name = (f"g{scale:g}_{schedule}_k{top_k}_p{top_p}_t{temperature:g}").replace("None", "all")
                        cols = args.samples_per_class_in_grid
                        grid = samples.images.view(-1, 10, *samples.images.shape[1:])[:cols].transpose(0, 1)
                        save_grid(pipe.image_processor.postprocess(grid.reshape(-1, *samples.images.shape[1:])), 10,
                                  cols, os.path.join(args.output_dir, f"grid_{name}.png"))
                        report["settings"].append({**sampling, "name": name, "accuracy": float(hits.double().mean()),
                                                   "per_class": per_class,
                                                   "seconds": time.perf_counter() - start})
                        print(f"{name}: accuracy {report['settings'][-1]['accuracy']:.3f}", flush=True)
    report["seconds"] = time.perf_counter() - started
    table = markdown_table(report, FASHION_MNIST_CLASSES)
    with open(os.path.join(args.output_dir, "guidance_sweep.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.output_dir, "guidance_sweep.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return report


def save_grid(images: list, rows: int, cols: int, path: str, scale: int = 2) -> None:
    """PIL images, row-major, as one PNG upscaled ``scale`` times (nearest neighbour)."""
    import PIL.Image
    from diffusers.utils import make_image_grid

    grid = make_image_grid(images, rows=rows, cols=cols)
    grid.resize((grid.width * scale, grid.height * scale), PIL.Image.Resampling.NEAREST).save(path)


def markdown_table(report: dict[str, Any], class_names) -> str:
    ceiling = report["accuracy_reconstructions"]
    lines = [f"Classifier accuracy on {report['num_test_images']} real test images: {report['accuracy_real']:.3f}; "
             f"on their reconstructions: {ceiling:.3f}. Samples: {report['num_samples']} per setting.", "",
             "| guidance | schedule | top-k | top-p | temperature | sample accuracy | / reconstructions "
             "| weakest classes |",
             "|---|---|---|---|---|---|---|---|"]
    for s in report["settings"]:
        weakest = sorted(range(10), key=lambda c: s["per_class"][c])[:3]
        weak = ", ".join(f"{class_names[c]} {s['per_class'][c]:.2f}" for c in weakest)
        lines.append(f"| {s['guidance_scale']:g} | {s['guidance_schedule']} | {s['top_k'] or 'all'} | "
                     f"{s['top_p'] or '–'} | {s['temperature']:g} | {s['accuracy']:.3f} | "
                     f"{s['accuracy'] / ceiling if ceiling else float('nan'):.0%} | {weak} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
