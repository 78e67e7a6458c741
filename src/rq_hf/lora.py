"""LoRA adapters (peft) for the RQ-Transformer: fine-tuning, small adapter folders, loading them into a pipeline.

Training (``examples/train_rq_transformer.py --use_lora``): [`add_lora_adapter`] wraps a trained transformer in a
peft `PeftModel` whose LoRA matrices are the only trainable parameters (the code embeddings, norms, position
and class embeddings and the base projections stay frozen); [`save_lora_adapter`] writes the adapter folder
(`adapter_config.json` + `adapter_model.safetensors`, peft's `save_pretrained`) atomically;
[`register_adapter_checkpointing`] makes accelerate's checkpoints hold the adapter instead of the whole model.

Inference: [`RQTransformerLoraLoaderMixin`] gives `RQTransformerPipeline` diffusers' LoRA methods
(`load_lora_weights`, `fuse_lora` / `unfuse_lora`, `unload_lora_weights`, `set_adapters`, `disable_lora`, ...).
The adapter folder is a plain peft adapter, so `PeftModel.from_pretrained(transformer, folder)` loads it too.

peft is imported only when an adapter is used: `import rq_hf` does not need it (`pip install -e ".[lora]"`).
"""

from __future__ import annotations

import os
from typing import Sequence

from diffusers.loaders.lora_base import LoraBaseMixin

from .models.atomic_save import atomic_save_directory

#: The projections LoRA adapts by default: attention (query, key, value, output) and MLP of every block.
LORA_TARGET_MODULES = ("query", "key", "value", "out_proj", "fc_in", "fc_out")
#: Sub-folder of a training checkpoint that holds the adapter (instead of accelerate's full `model.safetensors`).
CHECKPOINT_ADAPTER_DIR = "lora_adapter"


def _require_peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs peft: `pip install -e \".[lora]\"` (or `pip install peft`).") from err
    return peft


def check_lora_args(rank: int, alpha: float, dropout: float = 0.0, target_modules: Sequence[str] | None = None,
                    prefix: str = "--") -> None:
    """Raise `ValueError` naming the argument when a LoRA setting is out of range (`prefix` "--" for flags)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`{prefix}lora_rank` must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"`{prefix}lora_alpha` must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`{prefix}lora_dropout` must be in [0, 1), got {dropout!r}")
    names = target_modules
    if names is not None and (isinstance(names, str) or not names or not all(isinstance(t, str) and t for t in names)):
        raise ValueError(f"`{prefix}lora_target_modules` must be a non-empty list of module names, got {names!r}")


def add_lora_adapter(model, rank: int, alpha: float, target_modules: Sequence[str] | None = None,
                     dropout: float = 0.0, prefix: str = "--"):
    """Wrap `model` (an `RQTransformerForCausalImageModeling`) in a peft `PeftModel` with a LoRA adapter.

    Args:
        model: the trained or converted transformer; all its own parameters are frozen by peft.
        rank (`int`): rank r of the LoRA matrices.
        alpha (`float`): LoRA alpha (the update is scaled by alpha / r).
        target_modules (`list[str]`, *optional*): names of the `nn.Linear` layers to adapt, matched as peft does
            (a module whose name is, or ends with ".<name>"); default [`LORA_TARGET_MODULES`].
        dropout (`float`): dropout on the LoRA branch.
        prefix (`str`): how the error messages name the arguments ("--" for command-line flags, "" for Python).

    Returns:
        `peft.PeftModel`; `.get_base_model()` is `model` itself, with LoRA layers inside.
    """
    import torch

    check_lora_args(rank, alpha, dropout, target_modules, prefix)
    peft = _require_peft()
    targets = list(target_modules or LORA_TARGET_MODULES)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    unknown = [t for t in targets if t not in linear]
    if unknown:
        raise ValueError(
            f"`{prefix}lora_target_modules` must name nn.Linear layers of the transformer (one of {linear}), "
            f"got {unknown}"
        )
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(model, config)


def save_lora_adapter(peft_model, save_directory: str | os.PathLike, replace: str = "model", model_card=None) -> None:
    """peft's `save_pretrained` (safetensors) into `save_directory`, all or nothing (`rq_hf.models.atomic_save`).

    With `replace="model"` the weight and config files of an earlier save in the folder are replaced as a set;
    other entries (`checkpoint-*`, `logs/`) stay. `model_card` (a `huggingface_hub.ModelCard`, e.g. from
    `build_model_card("lora", ...)`) replaces peft's README.md.
    """
    with atomic_save_directory(save_directory, replace=replace) as staging:
        peft_model.save_pretrained(staging, safe_serialization=True)
        if model_card is not None:
            model_card.save(os.path.join(staging, "README.md"))


def register_adapter_checkpointing(accelerator, peft_model) -> None:
    """Make `accelerator.save_state` / `load_state` store the LoRA adapter of `peft_model` (a sub-folder
    [`CHECKPOINT_ADAPTER_DIR`] written by peft) instead of the whole model; optimizer, scheduler, RNG and custom
    states stay accelerate's."""
    peft = _require_peft()

    def is_ours(model) -> bool:
        return accelerator.unwrap_model(model) is peft_model

    def save_hook(models, weights, output_dir):
        for index in reversed(range(len(models))):
            if is_ours(models[index]):
                weights.pop(index)  # accelerate then writes no model.safetensors for it
                if accelerator.is_main_process:
                    peft_model.save_pretrained(os.path.join(output_dir, CHECKPOINT_ADAPTER_DIR))

    def load_hook(models, input_dir):
        for index in reversed(range(len(models))):
            if is_ours(models[index]):
                models.pop(index)
                folder = os.path.join(input_dir, CHECKPOINT_ADAPTER_DIR)
                state = peft.utils.load_peft_weights(folder, device="cpu")
                result = peft.set_peft_model_state_dict(peft_model, state)
                if getattr(result, "unexpected_keys", None):
                    raise ValueError(f"the checkpoint adapter {folder!r} does not fit the model: unexpected "
                                     f"{result.unexpected_keys[:4]}")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class RQTransformerLoraLoaderMixin(LoraBaseMixin):
    """diffusers' LoRA methods for a pipeline whose `transformer` is an RQ-Transformer (a transformers model).

    ```python
    pipe = RQTransformerPipeline.from_pretrained("base-pipeline")
    pipe.load_lora_weights("my-lora")            # adapter folder of train_rq_transformer.py --use_lora
    images = pipe(class_labels=[3]).images       # base + adapter
    pipe.fuse_lora()                             # merge into the weights (faster sampling); unfuse_lora() undoes it
    pipe.unload_lora_weights()                   # back to the base model (after fuse_lora: keeps the fused weights)
    pipe.save_pretrained("merged")               # refused while LoRA layers are loaded
    ```
    """

    _lora_loadable_modules = ["transformer"]

    def load_lora_weights(self, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str | None = None,
                          **kwargs) -> None:
        """Load a peft LoRA adapter (a folder or Hub id with `adapter_config.json`) into `self.transformer`
        (transformers' `load_adapter`; `adapter_name` defaults to "default", kwargs go to it)."""
        _require_peft()
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ValueError(f"`pretrained_model_name_or_path` must be a LoRA adapter folder (with "
                             f"adapter_config.json), got {path!r}")
        transformer = self.transformer
        # load_adapter leaves the adapter's key renaming as the model's save-time conversions: keep the model's own
        # so that a fused and unloaded model saves under its own weight names
        missing = object()
        conversions = transformer.__dict__.get("_weight_conversions", missing)
        transformer.load_adapter(path, adapter_name=adapter_name, **kwargs)
        if conversions is missing:
            transformer.__dict__.pop("_weight_conversions", None)
        else:
            transformer._weight_conversions = conversions

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Refuse to save while LoRA layers are loaded (the transformer would be saved as an adapter only)."""
        adapters = list(getattr(self.transformer, "peft_config", None) or {})
        if adapters:
            raise ValueError(
                f"`save_pretrained` needs a pipeline without LoRA layers, got adapters {adapters}: call `fuse_lora()` "
                "then `unload_lora_weights()` to save the merged weights, or `unload_lora_weights()` to save the base "
                "(the adapter folder holds the adapter)."
            )
        super().save_pretrained(save_directory, *args, **kwargs)

    def fuse_lora(self, components: Sequence[str] = ("transformer",), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: list[str] | None = None, **kwargs) -> None:
        """Merge the loaded adapters into the transformer's weights (diffusers' `fuse_lora`)."""
        super().fuse_lora(components=list(components), lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: Sequence[str] = ("transformer",), **kwargs) -> None:
        """Undo [`fuse_lora`]: the base weights come back (diffusers' `unfuse_lora`)."""
        super().unfuse_lora(components=list(components), **kwargs)


__all__ = [
    "CHECKPOINT_ADAPTER_DIR",
    "LORA_TARGET_MODULES",
    "RQTransformerLoraLoaderMixin",
    "add_lora_adapter",
    "check_lora_args",
    "register_adapter_checkpointing",
    "save_lora_adapter",
]
