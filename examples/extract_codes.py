#!/usr/bin/env python
"""Encode an image dataset with a trained RQ-VAE into a ``datasets`` dataset of codes (stage-2 input).

Example::

    python examples/extract_codes.py --vqvae_model_name_or_path rqvae-fmnist --dataset_name fashion_mnist \\
        --output_dir fmnist-codes            # then: datasets.load_from_disk("fmnist-codes")

The result has a column ``codes`` (``Array3D`` of shape (h, w, D), int32) and, when the source has the
label column (``--label_column``, default ``label``), a ``label`` column with the same feature (a
``ClassLabel`` keeps its class names), and when the source has the caption column (``--caption_column``,
default ``text``), a ``text`` column with the captions, for training a text-conditional transformer
(``train_rq_transformer.py --codes_dataset ... --caption_column text``). It is written with ``save_to_disk``
in ``--output_dir`` and, with ``--push_to_hub``, pushed with ``Dataset.push_to_hub``.

Encoding runs batched (``Dataset.map``) under ``torch.no_grad`` on ``--device`` (default: CUDA when
available). Images go through the same transform as training (``--resolution``, ``--center_crop`` (on
by default here), ``--pad_to_resolution``; never flipped). Undecodable images are skipped with a warning
(their rows are dropped). With ``--stochastic``, codes are sampled from the quantizer's soft codes
(``softmax(-distance / --temperature)`` per depth, reproducible with ``--seed``) instead of taken as the
nearest ones.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger("extract_codes")


def build_parser() -> argparse.ArgumentParser:
    """Flags: model, data (shared names with the training scripts), encoding and output."""
    from rq_hf.training.script_utils import add_data_args

    parser = argparse.ArgumentParser(
        description="Encode an image dataset into RQ-VAE codes (a datasets Dataset saved with save_to_disk).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--vqvae_model_name_or_path", type=str, required=True,
                        help="A trained RQVAEModel folder (save_pretrained) or Hub id.")
    add_data_args(parser)
    parser.set_defaults(center_crop=True)
    parser.add_argument("--no_center_crop", dest="center_crop", action="store_false",
                        help="Random crop instead of the default center crop.")
    parser.add_argument("--split", type=str, default="train", help="Split of the source dataset.")
    parser.add_argument("--label_column", type=str, default="label",
                        help="Copied to a `label` column when the dataset has it ('' to drop labels).")
    parser.add_argument("--caption_column", type=str, default="text",
                        help="Copied to a `text` column when the dataset has it ('' to drop captions).")
    parser.add_argument("--batch_size", type=int, default=256, help="Images encoded per forward pass.")
    parser.add_argument("--stochastic", action="store_true",
                        help="Sample codes from the quantizer's soft codes instead of the nearest codes.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Temperature of --stochastic codes.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of --stochastic sampling.")
    parser.add_argument("--device", type=str, default=None, help="torch device (default: cuda if available).")
    parser.add_argument("--output_dir", type=str, required=True, help="Folder for save_to_disk.")
    parser.add_argument("--push_to_hub", action="store_true", help="Also push the dataset to the Hub.")
    parser.add_argument("--hub_dataset_id", type=str, default=None,
                        help="Dataset repo id (default: output_dir's name).")
    parser.add_argument("--hub_token", type=str, default=None)
    parser.add_argument("--hub_private", action="store_true")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; ``ValueError`` names the bad flag."""
    args = build_parser().parse_args(argv)
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError(
            f"give exactly one of `--dataset_name` ({args.dataset_name!r}) and `--train_data_dir` "
            f"({args.train_data_dir!r})"
        )
    if args.batch_size < 1:
        raise ValueError(f"`--batch_size` must be >= 1, got {args.batch_size}")
    if not args.temperature > 0:
        raise ValueError(f"`--temperature` must be > 0, got {args.temperature}")
    return args


def extract_codes(args: argparse.Namespace):
    """Encode the dataset named by ``args``; returns the codes ``datasets.Dataset`` (not yet saved)."""
    import datasets
    import numpy as np
    import torch

    from rq_hf.data import ImageBatchTransform, ImageTransform, check_caption_column
    from rq_hf.models.autoencoder_rqvae import RQVAEModel
    from rq_hf.training.script_utils import load_train_dataset

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = RQVAEModel.from_pretrained(args.vqvae_model_name_or_path).to(device).eval()
    label_column = args.label_column or None
    dataset = load_train_dataset(args, split=args.split)
    if label_column is not None and label_column not in dataset.column_names:
        logger.info("No %r column in the dataset: the codes dataset has no labels", label_column)
        label_column = None
    caption_column = args.caption_column or None
    if caption_column is not None and caption_column not in dataset.column_names:
        logger.info("No %r column in the dataset: the codes dataset has no captions", caption_column)
        caption_column = None
    check_caption_column(dataset, caption_column, f"the dataset (--caption_column {caption_column!r})")
    code_shape = vae.code_shape_for(args.resolution, args.resolution)
    transform = ImageTransform(args.resolution, center_crop=args.center_crop, random_flip=False,
                               num_channels=vae.config.in_channels, pad_to_resolution=args.pad_to_resolution)
    batch_transform = ImageBatchTransform(
        transform, args.image_column, label_column, on_decode_error="skip", caption_column=caption_column
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)

    features = {"codes": datasets.Array3D(shape=code_shape, dtype="int32")}
    if label_column is not None:
        features["label"] = dataset.features[label_column]
    if caption_column is not None:
        features["text"] = datasets.Value("string")
    features = datasets.Features(features)

    @torch.no_grad()
    def encode(batch: dict) -> dict:
        rows = batch_transform(batch)
        keep = [i for i, pixels in enumerate(rows["pixel_values"]) if pixels is not None]
        out: dict = {"codes": []}
        if label_column is not None:
            out["label"] = [rows["class_labels"][i] for i in keep]
        if caption_column is not None:
            out["text"] = [rows["captions"][i] for i in keep]
        if not keep:
            return out
        images = torch.stack([rows["pixel_values"][i] for i in keep]).to(device)
        encoded = vae.encode(images)
        if args.stochastic:
            latents = encoded.latents.permute(0, 2, 3, 1)
            soft = vae.quantizer.soft_codes(latents, args.temperature, stochastic=True, generator=generator)
            codes = soft.codes
        else:
            codes = encoded.codes
        out["codes"] = list(codes.to(torch.int32).cpu().numpy().astype(np.int32))
        return out

    dataset = dataset.cast_column(args.image_column, datasets.Image(decode=False))
    codes = dataset.map(
        encode,
        batched=True,
        batch_size=args.batch_size,
        remove_columns=dataset.column_names,
        features=features,
        desc="Encoding",
        new_fingerprint=f"rq-codes-{os.path.basename(os.path.normpath(args.vqvae_model_name_or_path))}"
        f"-{args.seed}-{args.stochastic}-{args.temperature}-{len(dataset)}",
        load_from_cache_file=False,
    )
    skipped = batch_transform.num_skipped
    if skipped:
        logger.warning("Skipped %d undecodable image(s)", skipped)
    if len(codes) == 0:
        raise ValueError("no image of the dataset could be encoded (all undecodable)")
    return codes


def main(argv: list[str] | None = None):
    """Encode, ``save_to_disk`` into ``--output_dir``, optionally push; returns the dataset."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    codes = extract_codes(args)
    from rq_hf.models.atomic_save import atomic_save_directory

    with atomic_save_directory(args.output_dir, replace="all") as staging:  # all or nothing
        codes.save_to_disk(staging)
    logger.info("Saved %d rows of codes %s to %s", len(codes), codes.features["codes"].shape, args.output_dir)
    if args.push_to_hub:
        repo_id = args.hub_dataset_id or os.path.basename(os.path.normpath(args.output_dir))
        codes.push_to_hub(repo_id, token=args.hub_token, private=args.hub_private)
        logger.info("Pushed the codes to the Hub dataset %s", repo_id)
    return codes


if __name__ == "__main__":
    from rq_hf.training.script_utils import run_cli

    run_cli(main, build_parser)  # bad flags or inputs: a usage line and the message, no traceback
