"""Training memory per device under DDP, FSDP and DeepSpeed ZeRO-3, measured from the modules on the meta device.

[`profile_training_memory`] runs one training forward of a model that lives on the meta device (no weights
are allocated, nothing is computed) and records what the real modules would keep for the backward pass:
every tensor saved by autograd plus the outputs, deduplicated by storage, parameters left out. It also counts
the parameters, the trainable ones (so a LoRA / frozen-embedding model is sized right), the `nn.Linear`
weights and the largest *wrap unit* (by default the classes in the model's `_no_split_modules`, which is what
accelerate's FSDP auto-wrap shards one by one). [`memory_per_device`] turns such a profile into bytes per
device for a strategy and a number of processes.

The accounting (bytes; P parameters, Pt trainable, Pm in `nn.Linear` weights, U / Ut parameters of the
largest wrap unit, R / Rt parameters outside every wrap unit, N processes; bf16 compute, fp32 master weights
and AdamW):

=========  ==========================================  =========================================  ===========
strategy   weights                                     gradients                                  optimizer
=========  ==========================================  =========================================  ===========
ddp        4 P fp32 + 2 Pm bf16 copies kept by         4 Pt + 4 Pt reducer buckets (accelerate's  8 Pt
           autocast for the backward                   default `gradient_as_bucket_view=False`)
fsdp       4 P / N fp32 shards + 2 R root unit + 2 x   4 Pt / N + 6 (Rt + Ut): unsharded bf16     8 Pt / N
           2 U gathered bf16 units (current and        gradients of the root and one unit and
           prefetched)                                 their fp32 copy for the reduce-scatter
zero3      2 P / N bf16 + 4 Pt / N fp32 master         2 Pt / N bf16 partitions + 2 Ut of one     8 Pt / N
           partitions + 2 x 2 U gathered units         unit before its reduce-scatter
=========  ==========================================  =========================================  ===========

FSDP is FSDP2 full sharding with `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`; ZeRO-3 is
DeepSpeed's bf16 mode, whose live gathered parameters depend on `stage3_prefetch_bucket_size` and
`stage3_max_live_parameters` (two units assumed here). Activations do not depend on the strategy: they are
measured in bf16 with the attention kernel a GPU uses in bf16 (flash attention: output and log-sum-exp saved,
no attention matrix). With activation checkpointing of the wrap units, a unit keeps only its input and one
unit's activations are rebuilt at a time. Not counted: the transient workspace of the backward (e.g. the
gradient of the logits), the CUDA context and the allocator's fragmentation; leave 10-20% headroom.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

STRATEGIES = ("ddp", "fsdp", "zero3")


@dataclass
class MemoryProfile:
    """What one model needs for a training step, independent of the strategy (see the module docstring).

    Args:
        num_parameters: all parameters (P).
        num_trainable_parameters: parameters with `requires_grad` (Pt).
        num_linear_parameters: parameters in `nn.Linear` weights (Pm), which autocast keeps a bf16 copy of.
        unit_parameters / unit_trainable_parameters: parameters of the largest wrap unit (U / Ut).
        root_parameters / root_trainable_parameters: parameters outside every wrap unit (R / Rt).
        num_units: number of wrap units.
        activation_bytes: bytes kept from the forward for the backward (saved tensors and outputs).
        checkpointed_activation_bytes: the same with activation checkpointing of every wrap unit.
        unit_activation_bytes: bytes saved inside the largest wrap unit (rebuilt one unit at a time by
            checkpointing).
        batch_size: batch of the profiled forward (first dimension of the first input).
    """

    num_parameters: int
    num_trainable_parameters: int
    num_linear_parameters: int
    unit_parameters: int
    unit_trainable_parameters: int
    root_parameters: int
    root_trainable_parameters: int
    num_units: int
    activation_bytes: int
    checkpointed_activation_bytes: int
    unit_activation_bytes: int
    batch_size: int


@dataclass
class MemoryBreakdown:
    """Bytes per device of one strategy (see the module docstring for the formulas)."""

    strategy: str
    num_processes: int
    parameters_per_device: int
    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    checkpointed_activations: int

    @property
    def total(self) -> int:
        """Weights + gradients + optimizer state + activations (without activation checkpointing)."""
        return self.weights + self.gradients + self.optimizer_state + self.activations

    @property
    def total_checkpointed(self) -> int:
        """The same total with activation checkpointing of the wrap units."""
        return self.weights + self.gradients + self.optimizer_state + self.checkpointed_activations

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), total=self.total, total_checkpointed=self.total_checkpointed)


class _NoTensorValues(TorchDispatchMode):
    """Meta tensors have no values: answer the value reads of input checks (`.item()`, `bool(t)`) with zero."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return False if args[0].dtype == torch.bool else 0
        return func(*args, **(kwargs or {}))


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, kwargs


class _FlashAttentionOnMeta(TorchFunctionMode):
    """Route mask-free `scaled_dot_product_attention` on meta tensors to the flash kernel (as a GPU runs it in
    bf16); the meta device would otherwise take the math path, which saves the attention matrix in fp32."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, key, value, mask, dropout_p, is_causal, scale, extra = _sdpa_arguments(*args, **kwargs)
            if mask is None and not extra and query.device.type == "meta" and query.shape == key.shape:
                return torch.ops.aten._scaled_dot_product_flash_attention(
                    query, key, value, dropout_p, is_causal, scale=scale
                )[0]
        return func(*args, **kwargs)


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _wrap_units(model: nn.Module, wrap_classes: Sequence[str] | None) -> list[nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or []) if wrap_classes is None else set(wrap_classes)
    units, inside = [], set()
    for module in model.modules():
        if type(module).__name__ in names and id(module) not in inside:
            units.append(module)
            inside.update(id(m) for m in module.modules())
    return units


def profile_training_memory(
    model: nn.Module,
    inputs: Mapping[str, Any],
    wrap_classes: Sequence[str] | None = None,
    compute_dtype: torch.dtype = torch.bfloat16,
    loss_key: str = "loss",
) -> MemoryProfile:
    """Measure a training forward of `model` on the meta device (nothing is allocated).

    Args:
        model: a module on the meta device (build it under `with torch.device("meta"):`); it is not modified
            (a copy is cast to `compute_dtype`). Its `requires_grad` flags decide what is trainable.
        inputs: keyword arguments of `model(**inputs)`, tensors on the meta device (others are moved there);
            the output must hold a scalar `loss_key` (e.g. `labels` given).
        wrap_classes: class names of the wrap units; defaults to `model._no_split_modules`.
        compute_dtype: dtype of the forward (parameters cast to it, as FSDP's `param_dtype` / DeepSpeed bf16).
        loss_key: name of the loss in the output (a `ModelOutput`, a dict or an object with that attribute).

    Returns:
        [`MemoryProfile`].
    """
    from ..models.hub_utils import tensors_on_meta

    parameters = list(model.parameters())
    if len(tensors_on_meta(model)) < len(parameters) + len(list(model.buffers())):
        devices = sorted({str(p.device) for p in parameters})
        raise ValueError(
            "`model` must live on the meta device (build it under `with torch.device('meta'):`), "
            f"got parameters on {devices}."
        )
    units = _wrap_units(model, wrap_classes)
    if not units:
        raise ValueError(
            f"`wrap_classes` must name module classes of `model` (default: its `_no_split_modules`), got "
            f"{wrap_classes if wrap_classes is not None else getattr(model, '_no_split_modules', None)!r}."
        )

    def count(params: Iterable[nn.Parameter], trainable: bool = False) -> int:
        return sum(p.numel() for p in params if p.requires_grad or not trainable)

    unit_sizes = [(count(u.parameters()), count(u.parameters(), True)) for u in units]
    in_units = {id(p) for u in units for p in u.parameters()}
    root = [p for p in parameters if id(p) not in in_units]
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))

    work = copy.deepcopy(model).to(compute_dtype).train()
    work_units = _wrap_units(work, wrap_classes)
    seen = {id(p.untyped_storage()) for p in work.parameters()}  # parameters are not activations
    outside = 0  # bytes kept outside every unit, and the unit inputs
    unit_bytes = [0] * len(work_units)  # bytes saved inside each unit
    storages = []  # keeps the storages alive, so that their ids stay unique
    current = [None]

    def remember(tensor: torch.Tensor, unit: int | None) -> None:
        nonlocal outside
        storage = tensor.untyped_storage()
        if id(storage) in seen:
            return
        seen.add(id(storage))
        storages.append(storage)
        if unit is None:
            outside += storage.nbytes()
        else:
            unit_bytes[unit] += storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        remember(tensor, current[0])
        return tensor

    handles = []
    for index, unit in enumerate(work_units):

        def enter(module, args, kwargs, index=index):
            for tensor in _tensors((args, kwargs)):  # the unit input: all that checkpointing keeps of it
                if tensor.is_floating_point():
                    remember(tensor, None)
            current[0] = index

        def leave(module, args, output):
            current[0] = None

        handles.append(unit.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(unit.register_forward_hook(leave))
    meta_inputs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    try:
        with _NoTensorValues(), _FlashAttentionOnMeta(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = work(**meta_inputs)
    finally:
        for handle in handles:
            handle.remove()
    loss = output.get(loss_key) if isinstance(output, Mapping) else getattr(output, loss_key, None)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"`inputs` must make the model return a scalar `{loss_key}`, got {type(loss).__name__}.")
    for tensor in _tensors(output):  # the outputs live until the backward too
        remember(tensor, None)
    first = next(_tensors(meta_inputs), None)
    return MemoryProfile(
        num_parameters=count(parameters),
        num_trainable_parameters=count(parameters, True),
        num_linear_parameters=linear,
        unit_parameters=max(size for size, _ in unit_sizes),
        unit_trainable_parameters=max(size for _, size in unit_sizes),
        root_parameters=count(root),
        root_trainable_parameters=count(root, True),
        num_units=len(units),
        activation_bytes=outside + sum(unit_bytes),
        checkpointed_activation_bytes=outside + max(unit_bytes),
        unit_activation_bytes=max(unit_bytes),
        batch_size=int(first.shape[0]) if first is not None and first.dim() else 1,
    )


def memory_per_device(profile: MemoryProfile, strategy: str, num_processes: int) -> MemoryBreakdown:
    """Bytes per device of `strategy` ("ddp", "fsdp" or "zero3") over `num_processes` devices."""
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"`num_processes` must be a positive integer, got {num_processes!r}.")
    p, pt, n = profile.num_parameters, profile.num_trainable_parameters, num_processes
    u, ut, r, rt = (profile.unit_parameters, profile.unit_trainable_parameters, profile.root_parameters,
                    profile.root_trainable_parameters)

    def shard(count: int) -> int:
        return -(-count // n)

    if strategy == "ddp":
        parameters, weights = p, 4 * p + 2 * profile.num_linear_parameters
        gradients, optimizer = 8 * pt, 8 * pt
    elif strategy == "fsdp":
        parameters, weights = shard(p), 4 * shard(p) + 2 * r + 2 * 2 * u
        gradients, optimizer = 4 * shard(pt) + 6 * (rt + ut), 8 * shard(pt)
    else:
        parameters, weights = shard(p), 2 * shard(p) + 4 * shard(pt) + 2 * 2 * u
        gradients, optimizer = 2 * shard(pt) + 2 * ut, 8 * shard(pt)
    return MemoryBreakdown(
        strategy=strategy,
        num_processes=n,
        parameters_per_device=parameters,
        weights=weights,
        gradients=gradients,
        optimizer_state=optimizer,
        activations=profile.activation_bytes,
        checkpointed_activations=profile.checkpointed_activation_bytes,
    )


__all__ = ["STRATEGIES", "MemoryBreakdown", "MemoryProfile", "memory_per_device", "profile_training_memory"]
