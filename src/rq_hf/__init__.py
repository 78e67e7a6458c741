"""rq-hf: RQ-VAE and RQ-Transformer for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"

__all__ = []
