"""Stage-2 configurations of the official class-conditional ImageNet RQ-Transformers (256px, 8x8x4 codes).

The values are those of kakaobrain/rq-vae-transformer's ``configs/imagenet256/stage2/
in256-rqtransformer-8x8x4-{480M,800M,1400M,3800M}.yaml`` (the releases ``imagenet_480M``, ``imagenet_821M``,
``imagenet_1.4B`` and ``imagenet_3.8B_rqvae_50e`` of the converter's table). They go through the converter's
own translation (:func:`rq_transformer_kwargs_from_official`), so a config built here is the config of a
converted checkpoint. Use them to size hardware or to build a model of the paper's shape without its weights
(e.g. on the meta device).

Example:

```python
>>> import torch
>>> from rq_hf import RQTransformerForCausalImageModeling
>>> from rq_hf.conversion.official_configs import official_rq_transformer_config
>>> with torch.device("meta"):
...     model = RQTransformerForCausalImageModeling(official_rq_transformer_config("imagenet_1.4B"))
```
"""

from __future__ import annotations

from typing import Any, Dict

from ..models.configuration_rq_transformer import RQTransformerConfig
from .convert_original import rq_transformer_kwargs_from_official


def _stage2(embed_dim: int, body_layers: int, head_layers: int, heads: int, batch_size: int) -> Dict[str, Any]:
    """The parts of an official ImageNet stage-2 YAML that differ between the four sizes."""
    return {
        "dataset": {"type": "imagenet", "vocab_size": 16384},
        "arch": {
            "type": "rq-transformer",
            "block_size": [8, 8, 4],
            "embed_dim": embed_dim,
            "input_embed_dim": 256,
            "shared_tok_emb": True,
            "shared_cls_emb": True,
            "input_emb_vqvae": True,
            "head_emb_vqvae": True,
            "cumsum_depth_ctx": True,
            "vocab_size_cond": 1000,
            "block_size_cond": 1,
            "body": {"n_layer": body_layers, "block": {"n_head": heads}},
            "head": {"n_layer": head_layers, "block": {"n_head": heads}},
        },
        # official training: AMP, AdamW (betas 0.9, 0.95), total batch 2048, this batch per GPU
        "experiment": {"amp": True, "batch_size": batch_size, "total_batch_size": 2048},
    }


OFFICIAL_IMAGENET_STAGE2 = {
    "imagenet_480M": _stage2(1536, 12, 4, 24, batch_size=32),
    "imagenet_821M": _stage2(1536, 24, 4, 24, batch_size=32),
    "imagenet_1.4B": _stage2(1536, 42, 6, 24, batch_size=8),
    "imagenet_3.8B_rqvae_50e": _stage2(2560, 42, 6, 40, batch_size=8),
}
"""Release name -> official stage-2 config (as parsed from its YAML), for the four ImageNet sizes."""


def official_rq_transformer_config(name: str) -> RQTransformerConfig:
    """`RQTransformerConfig` of an official ImageNet release (a key of `OFFICIAL_IMAGENET_STAGE2`)."""
    if name not in OFFICIAL_IMAGENET_STAGE2:
        raise ValueError(f"`name` must be one of {list(OFFICIAL_IMAGENET_STAGE2)}, got {name!r}.")
    return RQTransformerConfig(**rq_transformer_kwargs_from_official(OFFICIAL_IMAGENET_STAGE2[name]))


def official_batch_size(name: str) -> int:
    """Per-GPU batch size of the official training of a release."""
    if name not in OFFICIAL_IMAGENET_STAGE2:
        raise ValueError(f"`name` must be one of {list(OFFICIAL_IMAGENET_STAGE2)}, got {name!r}.")
    return OFFICIAL_IMAGENET_STAGE2[name]["experiment"]["batch_size"]


__all__ = ["OFFICIAL_IMAGENET_STAGE2", "official_batch_size", "official_rq_transformer_config"]
