"""A Fashion-MNIST classifier worth trusting, shipped with the package: the judge of class-conditional samples.

``load_fashion_mnist_classifier()`` returns a [`SmallImageClassifier`] (32x32 grayscale images in [-1, 1],
Fashion-MNIST padded from 28x28, as ``rq_hf.training.load_fashion_mnist`` + ``pad_to_resolution`` give them)
trained on the 60,000 training images with random shifts and flips. Its accuracy on the 10,000 test images is
stored in the weight file's metadata (``classifier_test_accuracy``). Rebuild the file with

    python -m rq_hf.evaluation.fashion_mnist_classifier --epochs 4

(about 10 minutes on 2 quiet CPU cores; the seed fixes the result on a given machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from .classifier import SmallImageClassifier, class_accuracy, train_classifier

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_classifier.safetensors")
RECIPE = {"width": 16, "feature_dim": 128, "dropout": 0.2, "batch_size": 128, "learning_rate": 3e-3,
          "weight_decay": 1e-4, "label_smoothing": 0.1, "augment": True}


def load_fashion_mnist_classifier(path: str | os.PathLike | None = None) -> SmallImageClassifier:
    """The shipped Fashion-MNIST classifier (or the one at ``path``), in eval mode on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path) if path is not None else WEIGHTS_PATH
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`path` must be a classifier weight file, got {path!r}: build it with "
            "`python -m rq_hf.evaluation.fashion_mnist_classifier --output PATH`"
        )
    with safe_open(path, framework="pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
    classifier = SmallImageClassifier(1, 10, width=recipe["width"], feature_dim=recipe["feature_dim"],
                                      dropout=recipe["dropout"])
    classifier.load_state_dict(load_file(path))
    return classifier.eval()


def classifier_metadata(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The metadata stored with the weights (recipe, epochs, seed, test accuracy)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path) if path is not None else WEIGHTS_PATH, framework="pt") as f:
        return dict(f.metadata())


def fashion_mnist_tensors(split: str):
    """``ImageSet`` of a Fashion-MNIST split: images (N, 1, 32, 32) in [-1, 1] padded from 28x28, labels."""
    from ..data import load_fashion_mnist
    from .model_evaluation import load_image_tensors

    return load_image_tensors(load_fashion_mnist(split), 32, num_channels=1, pad_to_resolution=True,
                              label_column="label")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="Train the shipped Fashion-MNIST classifier.")
    parser.add_argument("--output", default=WEIGHTS_PATH, help="Where to write the safetensors file.")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_train_samples", type=int, default=None, help="First N training images only.")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    from safetensors.torch import save_file

    start = time.perf_counter()
    train, test = fashion_mnist_tensors("train"), fashion_mnist_tensors("test")
    images, labels = train.images, train.labels
    if args.max_train_samples is not None:
        images, labels = images[: args.max_train_samples], labels[: args.max_train_samples]
    classifier = train_classifier(images, labels, num_classes=10, epochs=args.epochs,
                                  generator=torch.Generator().manual_seed(args.seed), **RECIPE)
    accuracy = class_accuracy(classifier, test.images, test.labels)
    metadata = {"recipe": json.dumps(RECIPE), "epochs": str(args.epochs), "seed": str(args.seed),
                "train_images": str(len(images)), "classifier_test_accuracy": f"{accuracy:.4f}"}
    tmp = f"{args.output}.tmp"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, tmp, metadata=metadata)
    os.replace(tmp, args.output)
    minutes = (time.perf_counter() - start) / 60
    print(f"test accuracy {accuracy:.4f} ({len(test.labels)} images); {minutes:.1f} min; saved {args.output}")
    return {"test_accuracy": accuracy, "minutes": minutes}


if __name__ == "__main__":
    main()
