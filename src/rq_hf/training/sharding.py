"""Sharded training with accelerate's engines (FSDP, DeepSpeed ZeRO) for the training scripts.

A script runs sharded when it is launched with an accelerate config that asks for it (the examples are in
``examples/configs/``)::

    accelerate launch --config_file examples/configs/fsdp.yaml --num_processes 8 \\
        examples/train_rq_transformer.py --vqvae_model_name_or_path ... --output_dir ...

Everything else stays as in a data-parallel run: ``accelerator.save_state`` writes sharded checkpoints (FSDP:
one ``torch.distributed.checkpoint`` shard per process in ``pytorch_model_fsdp_0/`` and ``optimizer_0/``;
DeepSpeed: its own folder) into the usual ``checkpoint-<step>`` folders with their manifest
(``rq_hf.training.script_utils.save_checkpoint``), and ``--resume_from_checkpoint latest`` reloads them.
This module holds what sharding changes:

- :func:`enable_fsdp_on_cpu`: accelerate turns FSDP on only for accelerator devices; with CPU processes it
  would silently fall back to plain data parallelism. Torch's FSDP2 shards over gloo, so it is switched on.
- :func:`configure_sharding`: before ``accelerator.prepare(model)``: frozen parts of the model (the frozen
  code embeddings) are left out of the sharding (whole and fp32 on every process), the wrap unit defaults to
  the model's ``_no_split_modules`` (the transformer blocks), and flags that do not work sharded are refused.
- :func:`full_model_on_main`: the whole model on the main process for validation and the final
  ``save_pretrained`` (``accelerator.get_state_dict`` gathers the shards; a collective call).

The frozen RQ-VAE (and its quantizer) of stage 2 is never given to ``accelerator.prepare``: it stays whole,
fp32 and outside the engine on every process.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os

logger = logging.getLogger(__name__)

__all__ = [
    "configure_sharding",
    "enable_fsdp_on_cpu",
    "fill_deepspeed_config",
    "full_model_on_main",
    "is_sharded",
    "require_unsharded",
    "scalar",
]


def is_sharded(accelerator) -> bool:
    """True when the model is sharded over the processes (FSDP or DeepSpeed)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Switch FSDP2 on for CPU processes launched with an FSDP accelerate config; True when it did.

    accelerate (1.15) enables FSDP only on accelerator devices: CPU processes started with an FSDP config
    end up in plain data parallelism (``MULTI_CPU``, every process holding the whole model and optimizer),
    without a word. Torch's FSDP2 (``fully_shard``) shards over gloo, so this sets accelerate's state to
    FSDP with the plugin that the config's environment describes (as accelerate builds it on a GPU).
    Call it right after building the ``Accelerator``, before any ``prepare``.

    Raises:
        ValueError: the config asks for FSDP1 (``fsdp_version: 1``), which is not used on CPU here, or the
            processes were started without ``ACCELERATE_USE_CPU=true`` on a machine without GPUs (then
            accelerate does not initialise the process group and every process believes it is alone).
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.distributed_type == DistributedType.NO and world_size > 1:
        raise ValueError(
            f"an FSDP accelerate config started {world_size} processes, but accelerate sees one process "
            "(no GPU found): on CPU processes set ACCELERATE_USE_CPU=true, e.g. "
            "`ACCELERATE_USE_CPU=true accelerate launch --config_file examples/configs/fsdp.yaml ...`"
        )
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment of the config, as accelerate does
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP on CPU processes needs FSDP2: `fsdp_version` in the accelerate config must be 2, got "
            f"{plugin.fsdp_version}"
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # AcceleratorState copies PartialState's fields whenever it is built again (prepare does): set both.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    logger.info("FSDP2 on %d CPU processes (gloo)", accelerator.num_processes)
    return True


def require_unsharded(accelerator, what: str, reason: str) -> None:
    """Raise ``ValueError`` naming ``what`` and ``reason`` when the launch config shards (FSDP/DeepSpeed)."""
    if is_sharded(accelerator):
        raise ValueError(
            f"{what} does not run sharded ({accelerator.distributed_type.value} in the accelerate config): "
            f"{reason}; launch it data-parallel (e.g. `accelerate launch --multi_gpu ...`)"
        )


def _frozen_submodules(model) -> list:
    """The outermost submodules whose parameters are all frozen (e.g. the frozen code embeddings)."""
    frozen, seen = [], set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in seen):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.append(module)
            seen.add(name)
    return frozen


def configure_sharding(accelerator, model, args: argparse.Namespace | None = None) -> None:
    """Adapt accelerate's FSDP plugin to ``model`` before ``accelerator.prepare(model)``; no-op unsharded.

    - Frozen submodules (all parameters ``requires_grad=False``, e.g. the code embeddings copied from the
      RQ-VAE codebook) become the plugin's ``ignored_modules`` when the config names none: they stay whole
      and fp32 on every process, outside the sharding and outside FSDP's mixed-precision cast.
      (``cpu_ram_efficient_loading`` is turned off then: it would re-create the parameters and lose them.)
    - A config without an auto wrap policy (``NO_WRAP``: the whole model one unit) gets the transformer
      policy: the wrap unit is then the model's ``_no_split_modules`` (``RQTransformerBlock``), unless the
      config names ``fsdp_transformer_layer_cls_to_wrap``.
    - ``--use_ema`` is refused (``ValueError``): the EMA copy would hold the whole model on every process;
      ``--use_lora`` too: only the adapters train, the frozen base fits data-parallel.

    DeepSpeed: the frozen parameters get no optimizer state and the config file sets the partitioning; its
    ``"auto"`` batch size and clipping come from the flags (:func:`fill_deepspeed_config`).
    """
    from accelerate.utils import DistributedType

    if not is_sharded(accelerator):
        return
    if args is not None and getattr(args, "use_ema", False):
        raise ValueError(
            f"`--use_ema` is not supported with sharded training ({accelerator.distributed_type.value}): the "
            "EMA copy would hold the whole model on every process; drop --use_ema or train data-parallel"
        )
    if args is not None and getattr(args, "use_lora", False):
        raise ValueError(
            f"`--use_lora` is not supported with sharded training ({accelerator.distributed_type.value}): only "
            "the adapters train, so the frozen base fits every process (LoRA memory in docs/benchmarks.md); "
            "train LoRA data-parallel"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin, args)
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.ignored_modules is None:
        frozen = _frozen_submodules(model)
        if frozen:
            plugin.ignored_modules = frozen
            if plugin.cpu_ram_efficient_loading:
                # accelerate moves the model to the meta device and back, which makes new parameters: the
                # ignored ones would no longer be recognised and get sharded. Every process holds the loaded
                # model here anyway, so rank-0-only loading saves nothing.
                logger.info("FSDP: cpu_ram_efficient_loading off (frozen modules are kept out of the sharding)")
                plugin.cpu_ram_efficient_loading = False
    if plugin.auto_wrap_policy is None and getattr(model, "_no_split_modules", None):
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        # accelerate then wraps the classes named by the config, or else the model's _no_split_modules
        plugin.auto_wrap_policy = transformer_auto_wrap_policy
        logger.info("FSDP: no auto wrap policy in the config; wrapping %s", model._no_split_modules)


def fill_deepspeed_config(plugin, args: argparse.Namespace | None) -> dict:
    """Fill the ``"auto"`` values of a DeepSpeed config that accelerate cannot know when the training data
    loader is prepared apart from the model (as the scripts do): ``train_micro_batch_size_per_gpu`` from
    ``--train_batch_size`` and ``gradient_clipping`` from ``--max_grad_norm`` (<= 0: no clipping; accelerate
    would put 1.0). Returns the config (``plugin.deepspeed_config``, changed in place)."""
    config = plugin.deepspeed_config
    if args is None:
        return config
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    if plugin.is_auto("gradient_clipping"):
        max_norm = getattr(args, "max_grad_norm", None)
        config["gradient_clipping"] = float(max_norm) if max_norm and max_norm > 0 else 0.0
    return config


def _plain_class(model) -> type:
    """The model's own class (FSDP2 swaps in a subclass ``FSDP<Class>``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return type(model)
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def full_model_on_main(accelerator, model, unsharded):
    """The whole model for validation and ``save_pretrained`` on the main process.

    Not sharded: ``unsharded`` (the unwrapped model, or its EMA) is returned as it is, without any
    communication. Sharded: ``accelerator.get_state_dict(model)`` gathers the weights (a collective: call it
    on EVERY process) and the main process loads them into a fresh fp32 model of the same class and config
    (built on the meta device, so the gathered weights are the only full copy); the other processes get
    None. The copy is in the training mode of ``model``.
    """
    import torch

    from ..models.hub_utils import tensors_on_meta

    if not is_sharded(accelerator):
        return unsharded
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    inner = accelerator.unwrap_model(model)
    cls = _plain_class(inner)
    with torch.device("meta"):
        if hasattr(cls, "from_config") and not hasattr(cls, "config_class"):  # diffusers ModelMixin
            plain = cls.from_config(inner.config)
        else:  # transformers PreTrainedModel
            plain = cls(copy.deepcopy(inner.config))
    plain.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    left = tensors_on_meta(plain)
    if left:
        raise RuntimeError(f"the gathered state dict of {cls.__name__} did not fill {left[:5]}")
    for name, parameter in inner.named_parameters():  # frozen stays frozen (the card and a resume read it)
        plain.get_parameter(name).requires_grad_(parameter.requires_grad)
    return plain.train(inner.training)


def scalar(value) -> float:
    """A Python float from a number, a tensor or a DTensor (FSDP2's gradient norm); NaN for None."""
    if value is None:
        return float("nan")
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)
