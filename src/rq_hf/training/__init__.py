"""Reusable building blocks of ``examples/train_rqvae.py`` and ``examples/train_rq_transformer.py``.

Independent of the model classes: losses and discriminator for the RQ-VAE's GAN training, the LPIPS
perceptual distance, image data loading and transforms, and a weights-and-buffers EMA.
"""

from .adversarial import adaptive_weight, adopt_weight, generator_adversarial_loss, hinge_d_loss
from .data import (
    FASHION_MNIST_CLASSES,
    ImageBatchTransform,
    ImageTransform,
    check_image_dataset,
    collate_images,
    load_fashion_mnist,
    load_image_dataset,
    with_image_transform,
)
from .discriminator import PatchGANDiscriminator
from .ema import make_ema_model
from .perceptual import LPIPS

__all__ = [
    "FASHION_MNIST_CLASSES",
    "LPIPS",
    "ImageBatchTransform",
    "ImageTransform",
    "PatchGANDiscriminator",
    "adaptive_weight",
    "adopt_weight",
    "check_image_dataset",
    "collate_images",
    "generator_adversarial_loss",
    "hinge_d_loss",
    "load_fashion_mnist",
    "load_image_dataset",
    "make_ema_model",
    "with_image_transform",
]
