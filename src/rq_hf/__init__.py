"""rq-hf: RQ-VAE and RQ-Transformer for the Hugging Face ecosystem."""

from .models.autoencoder_rqvae import RQVAEModel
from .models.configuration_rq_transformer import RQTransformerConfig
from .models.modeling_rq_transformer import RQTransformerForCausalImageModeling
from .models.residual_quantizer import ResidualQuantizer
from .pipelines.pipeline_rq_transformer import RQTransformerPipeline

__version__ = "0.1.0.dev0"

__all__ = [
    "RQVAEModel",
    "ResidualQuantizer",
    "RQTransformerConfig",
    "RQTransformerForCausalImageModeling",
    "RQTransformerPipeline",
]
