"""Reusable building blocks of ``examples/train_rqvae.py`` and ``examples/train_rq_transformer.py``.

Independent of the model classes: losses and discriminator for the RQ-VAE's GAN training, the LPIPS
perceptual distance, image data loading and transforms, a weights-and-buffers EMA, and the script
machinery both training scripts share (:mod:`rq_hf.training.script_utils`).

The names below are imported lazily (on first attribute access), so that a script can import
``rq_hf.training.script_utils`` to build its argument parser without paying for torch / datasets /
diffusers imports: ``--help`` stays fast.
"""

from ..lazy_exports import lazy_exports

_EXPORTS = {
    "adaptive_weight": "adversarial",
    "adopt_weight": "adversarial",
    "generator_adversarial_loss": "adversarial",
    "hinge_d_loss": "adversarial",
    "PatchGANDiscriminator": "discriminator",
    "make_ema_model": "ema",
    "LPIPS": "perceptual",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
