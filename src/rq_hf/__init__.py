"""rq-hf: RQ-VAE and RQ-Transformer for the Hugging Face ecosystem."""

from .models.configuration_rq_transformer import RQTransformerConfig
from .models.modeling_rq_transformer import RQTransformerForCausalImageModeling

__version__ = "0.1.0.dev0"

__all__ = ["RQTransformerConfig", "RQTransformerForCausalImageModeling"]
