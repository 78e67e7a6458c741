"""Evaluate an RQ-VAE or an RQ-Transformer pipeline on an image dataset; print a markdown table, write JSON.

The model folder is an ``RQVAEModel`` (``config.json``) or an ``RQTransformerPipeline`` (``model_index.json``),
as written by ``save_pretrained``. Metrics (the logic lives in ``rq_hf.evaluation``):

- always (the pipeline's RQ-VAE for a pipeline): reconstruction PSNR, SSIM (Gaussian window 11, sigma 1.5),
  codebook usage and perplexity per depth, and rFID (TF-Inception) at ``--fid_num_images`` images with the
  real-vs-real FID at the same N beside it;
- for a pipeline: generation FID and KID of ``--num_images`` samples against the evaluation split (with
  real-vs-real at the same N), FID / precision / recall in the feature space of a small classifier trained on
  the labelled ``--train_split`` (``--classifier_epochs``; cached in ``--output_dir``; for Fashion-MNIST at 32x32
  with ``--pad_to_resolution`` the classifier shipped with rq_hf, ``rq_hf.evaluation.fashion_mnist_classifier``), its
  accuracy on class-conditional samples, and the transformer's NLL in bits per code on the held-out codes.

``--no_inception`` skips rFID/FID/KID (fast mode). Offline examples::

    python examples/evaluate.py --model_path out/rqvae --dataset_name fashion_mnist --pad_to_resolution
    python examples/evaluate.py --model_path out/pipeline --dataset_name fashion_mnist --pad_to_resolution \\
        --num_images 500 --guidance_scale 2 --output_json out/eval/pipeline.json

``--dataset_name fashion_mnist`` reads the local Fashion-MNIST files; any other name is a ``save_to_disk``
folder or a ``datasets.load_dataset`` name; ``--train_data_dir`` an imagefolder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", required=True, help="RQ-VAE folder, or pipeline folder (model_index.json).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_name", help="'fashion_mnist' (offline files), a save_to_disk folder, or a name.")
    source.add_argument("--train_data_dir", help="An imagefolder (class subfolders become labels).")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default="test", help="Evaluation split (the reference set).")
    parser.add_argument("--train_split", default="train", help="Labelled split the small classifier learns from.")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default=None, help="Default: 'label' when the dataset has it.")
    parser.add_argument("--resolution", type=int, default=None, help="Default: the RQ-VAE's sample_size.")
    parser.add_argument("--pad_to_resolution", action="store_true", help="Pad small images (28 -> 32), no resize.")
    parser.add_argument("--max_samples", type=int, default=None, help="Use the first N images of --split.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--fid_num_images", type=int, default=1000, help="N of rFID (its real-vs-real needs 2N).")
    parser.add_argument("--num_images", type=int, default=500, help="Generated images for FID/KID/precision/recall.")
    parser.add_argument("--no_inception", action="store_true", help="Skip the Inception metrics (rFID, FID, KID).")
    parser.add_argument("--no_classifier", action="store_true", help="Skip the classifier metrics.")
    parser.add_argument("--classifier_epochs", type=int, default=3)
    parser.add_argument("--classifier_max_samples", type=int, default=None, help="First N images of --train_split.")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output_json", default=None, help="Write the report here.")
    parser.add_argument("--output_dir", default=None, help="Classifier cache; default: the folder of --output_json.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "fid_num_images", "num_images", "classifier_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not os.path.isdir(args.model_path):
        parser.error(f"--model_path must be a folder written by save_pretrained, got {args.model_path!r}")
    return args


def load_model(path: str, device: str) -> tuple[Any, Any | None]:
    """(vae, pipeline or None) from an RQ-VAE or pipeline folder, detected by ``model_index.json``."""
    from rq_hf import RQTransformerPipeline, RQVAEModel

    if os.path.isfile(os.path.join(path, "model_index.json")):
        pipe = RQTransformerPipeline.from_pretrained(path).to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe.vqvae, pipe
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"`model_path` {path!r} holds neither model_index.json (pipeline) nor config.json (RQ-VAE)")
    vae = RQVAEModel.from_pretrained(path)  # strict: weights that do not match the config raise
    return vae.to(device).eval(), None


def load_split(args: argparse.Namespace, split: str, label_column: str | None, resolution: int, channels: int,
               max_samples: int | None):
    from rq_hf.data import FASHION_MNIST_HUB_ID, load_fashion_mnist, load_image_dataset
    from rq_hf.evaluation import load_image_tensors

    if args.dataset_name == FASHION_MNIST_HUB_ID:
        dataset = load_fashion_mnist(split)
    else:
        dataset = load_image_dataset(
            dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir, split=split, image_column=args.image_column,
        )
    if label_column == "auto":
        label_column = "label" if "label" in dataset.column_names else None
    return load_image_tensors(
        dataset, resolution, num_channels=channels, pad_to_resolution=args.pad_to_resolution,
        max_samples=max_samples, image_column=args.image_column, label_column=label_column,
    ), label_column


def load_or_train_classifier(args: argparse.Namespace, resolution: int, channels: int, num_classes: int,
                             label_column: str, output_dir: str | None):
    """A SmallImageClassifier: for Fashion-MNIST at 32x32 (padded) the one shipped with rq_hf, otherwise one trained
    on --train_split, reused from ``output_dir`` when its settings match."""
    import torch

    from rq_hf.data import FASHION_MNIST_HUB_ID
    from rq_hf.evaluation import SmallImageClassifier, train_classifier
    from rq_hf.evaluation.fashion_mnist_classifier import WEIGHTS_PATH, load_fashion_mnist_classifier

    shipped = (args.dataset_name == FASHION_MNIST_HUB_ID and (resolution, channels, num_classes) == (32, 1, 10)
               and args.pad_to_resolution and os.path.isfile(WEIGHTS_PATH))
    if shipped:
        print(f"classifier: the shipped Fashion-MNIST classifier {WEIGHTS_PATH}", file=sys.stderr)
        return load_fashion_mnist_classifier(), WEIGHTS_PATH
    key = {
        "architecture": "4x4-map-v2",
        "dataset": args.dataset_name or os.path.abspath(args.train_data_dir), "split": args.train_split,
        "resolution": resolution, "channels": channels, "pad": args.pad_to_resolution, "classes": num_classes,
        "epochs": args.classifier_epochs, "max_samples": args.classifier_max_samples, "seed": args.seed,
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = os.path.join(output_dir, f"classifier_{digest}.pt") if output_dir else None
    if path and os.path.isfile(path):
        saved = torch.load(path, weights_only=True)
        classifier = SmallImageClassifier(channels, num_classes)
        classifier.load_state_dict(saved["state_dict"])
        print(f"classifier: reused {path}", file=sys.stderr)
        return classifier.eval(), path
    train, _ = load_split(args, args.train_split, label_column, resolution, channels, args.classifier_max_samples)
    classifier = train_classifier(train.images, train.labels, num_classes=num_classes, epochs=args.classifier_epochs,
                                  generator=torch.Generator().manual_seed(args.seed))
    if path:
        from rq_hf.models.atomic_save import atomic_save_file

        with atomic_save_file(path) as tmp:
            torch.save({"key": key, "state_dict": classifier.state_dict()}, tmp)
    return classifier, path


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: metric, value, real-vs-real value at the same N."""
    rec = report["reconstruction"]
    rows = [
        ("reconstruction PSNR (dB)", rec["psnr"], None),
        ("reconstruction SSIM (window 11, sigma 1.5)", rec["ssim"], None),
        ("codebook usage per depth", rec["codebook_usage"], None),
        ("codebook perplexity per depth", rec["perplexity"], None),
    ]
    if rec["rfid"] is not None:
        rows.append((f"rFID (Inception, N={rec['fid_num_images']})", rec["rfid"], rec["rfid_real_vs_real"]))
    gen = report.get("generation")
    if gen:
        n = gen["num_images"]
        if "fid" in gen:
            rows.append((f"FID (Inception, N={n})", gen["fid"], gen["real_vs_real_fid"]))
            rows.append((f"KID x1000 (Inception, N={n}, mean ± std)",
                         f"{gen['kid'][0] * 1e3:.3g} ± {gen['kid'][1] * 1e3:.2g}",
                         f"{gen['real_vs_real_kid'][0] * 1e3:.3g} ± {gen['real_vs_real_kid'][1] * 1e3:.2g}"))
        if "classifier_fid" in gen:
            rows.append((f"FID (classifier features, N={n})", gen["classifier_fid"],
                         gen["classifier_real_vs_real_fid"]))
            rows.append(("precision (classifier features, k=3)", gen["precision"], gen["real_vs_real_precision"]))
            rows.append(("recall (classifier features, k=3)", gen["recall"], gen["real_vs_real_recall"]))
        if "class_accuracy" in gen:
            rows.append(("class accuracy of conditional samples", gen["class_accuracy"],
                         gen.get("classifier_real_accuracy")))
    nll = report.get("nll")
    if nll:
        rows.append((f"NLL bits/code (held-out, uniform = {nll['uniform_bits_per_code']:.3g})",
                     nll["bits_per_code"], None))
    lines = [f"Model: `{report['model_path']}` ({report['model_type']}); data: {report['dataset']} "
             f"[{report['split']}], {rec['num_images']} images at {report['resolution']}px", "",
             "| metric | value | real vs real (same N) |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(value)} | {_fmt(baseline)} |" for name, value, baseline in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch
    import transformers

    from rq_hf.evaluation import (
        InceptionFeatureExtractor,
        evaluate_code_nll,
        evaluate_generation,
        evaluate_reconstruction,
    )

    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    vae, pipe = load_model(args.model_path, args.device)
    resolution = args.resolution or int(vae.config.sample_size)
    channels = int(vae.config.in_channels)
    if pipe is not None and resolution != int(vae.config.sample_size):
        raise ValueError(f"--resolution must be the pipeline's sample_size {vae.config.sample_size}, got {resolution}")
    label_column = args.label_column or "auto"
    data, label_column = load_split(args, args.split, label_column, resolution, channels, args.max_samples)
    output_dir = args.output_dir or (os.path.dirname(os.path.abspath(args.output_json)) if args.output_json else None)
    inception = None if args.no_inception else InceptionFeatureExtractor().to(args.device)

    report: dict[str, Any] = {
        "model_path": args.model_path, "model_type": "pipeline" if pipe is not None else "rqvae",
        "dataset": args.dataset_name or args.train_data_dir, "split": args.split, "resolution": resolution,
        "pad_to_resolution": args.pad_to_resolution, "seed": args.seed,
    }
    report["reconstruction"] = evaluate_reconstruction(
        vae, data.images, batch_size=args.batch_size, feature_extractor=inception,
        fid_num_images=min(args.fid_num_images, data.images.shape[0]),
    )
    if pipe is not None:
        classifier = None
        transformer = pipe.transformer
        if not args.no_classifier and label_column is not None:
            num_classes = max(int(data.labels.max()) + 1, transformer.config.num_classes or 0)
            classifier, report["classifier_path"] = load_or_train_classifier(
                args, resolution, channels, num_classes, label_column, output_dir
            )
        num_images = min(args.num_images, data.images.shape[0] // 2)
        if num_images < args.num_images:
            print(f"--num_images lowered to {num_images}: the real-vs-real baseline needs 2N reference images",
                  file=sys.stderr)
        report["generation"] = evaluate_generation(
            pipe, data.images, data.labels, num_images=num_images, batch_size=args.batch_size,
            feature_extractor=inception, classifier=classifier, generator=torch.Generator().manual_seed(args.seed),
            top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, guidance_scale=args.guidance_scale,
        )
        labels = data.labels if transformer.config.num_classes is not None else None
        if transformer.config.num_classes is not None and labels is None:
            print("NLL skipped: a class-conditional transformer needs a label column", file=sys.stderr)
        else:
            report["nll"] = evaluate_code_nll(vae, transformer, data.images, labels, batch_size=args.batch_size)
    report["seconds"] = time.perf_counter() - start
    print(markdown_table(report))
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, allow_nan=True)
    return report


if __name__ == "__main__":
    from rq_hf.training.script_utils import run_cli

    run_cli(main, build_parser)  # bad flags or inputs: a usage line and the message, no traceback
