"""rq-hf: RQ-VAE and RQ-Transformer for the Hugging Face ecosystem.

The package root is lazy, like transformers' and diffusers': `import rq_hf` imports neither torch nor
diffusers nor transformers; each public name is imported on first access. `AutoConfig` / `AutoModel` still know
"rq_transformer" afterwards (see [`rq_hf.auto_registration`]).
"""

from . import auto_registration
from .lazy_exports import lazy_exports

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "RQVAEModel": "models.autoencoder_rqvae",
    "ResidualQuantizer": "models.residual_quantizer",
    "RQTransformerConfig": "models.configuration_rq_transformer",
    "RQTransformerForCausalImageModeling": "models.modeling_rq_transformer",
    "RQTransformerPipeline": "pipelines.pipeline_rq_transformer",
}

__all__ = list(_EXPORTS)

auto_registration.register_when_transformers_loads()

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
