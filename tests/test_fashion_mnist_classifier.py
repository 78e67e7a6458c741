"""The Fashion-MNIST classifier shipped in rq_hf.evaluation: loads, and is right on real test images."""

import os

import pytest
import torch

from rq_hf.evaluation import augment_images, class_accuracy
from rq_hf.evaluation.fashion_mnist_classifier import (
    WEIGHTS_PATH,
    classifier_metadata,
    fashion_mnist_tensors,
    load_fashion_mnist_classifier,
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="needs the Debian package dataset-fashion-mnist (no network in tests)")
def test_shipped_classifier_is_accurate_on_real_test_images():
    classifier = load_fashion_mnist_classifier()
    assert not classifier.training
    metadata = classifier_metadata()
    assert float(metadata["classifier_test_accuracy"]) >= 0.88 and metadata["train_images"] == "60000"
    test = fashion_mnist_tensors("test")
    images, labels = test.images[:2000], test.labels[:2000]
    accuracy = class_accuracy(classifier, images, labels)
    assert accuracy >= 0.88
    assert class_accuracy(classifier, images, (labels + 1) % 10) < 0.05  # wrong labels asked: it disagrees


def test_missing_weights_name_the_path_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="fashion_mnist_classifier"):
        load_fashion_mnist_classifier(tmp_path / "missing.safetensors")
    assert WEIGHTS_PATH.endswith(".safetensors")


def test_augmentation_shifts_and_flips_deterministically():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    a = augment_images(images, torch.Generator().manual_seed(0))
    b = augment_images(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert torch.equal(augment_images(images, torch.Generator(), max_shift=0, flip=False), images)
    # every output row is a shifted (possibly mirrored) window of the replicate-padded input
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    for i in range(2):
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)
