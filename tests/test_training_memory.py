"""rq_hf.training.memory: meta-device estimates against a real forward, the per-strategy accounting, bad input."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling
from rq_hf.conversion.official_configs import (
    OFFICIAL_IMAGENET_STAGE2,
    official_batch_size,
    official_rq_transformer_config,
)
from rq_hf.training.memory import memory_per_device, profile_training_memory

CONFIG = dict(vocab_size=64, code_shape=[4, 4, 3], hidden_size=32, num_spatial_layers=3, num_depth_layers=2,
              num_attention_heads=4, num_classes=5, code_embedding_dim=8)


def inputs(soft: bool):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 64, (4, 4, 4, 3), generator=generator)
    labels = torch.softmax(torch.randn(4, 4, 4, 3, 64, generator=generator), -1) if soft else codes
    return dict(codes=codes, class_labels=torch.randint(0, 5, (4,), generator=generator), labels=labels)


def meta_profile(batch):
    with torch.device("meta"):
        model = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG))
    return profile_training_memory(model, batch)


def retained_by_forward(model, batch) -> int:
    """Bytes allocated and still alive after one forward (its saved tensors and outputs), from the allocator."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        output = model(**batch)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    assert output.loss.requires_grad
    return sum(event.nbytes() for event in events)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_meta_estimate_matches_a_real_bf16_forward(soft, checkpointing):
    batch = inputs(soft)
    estimate = meta_profile(batch)
    torch.manual_seed(0)
    model = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG)).to(torch.bfloat16).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    # the inputs were allocated before the forward, and the backward keeps them too (estimate counts them)
    real = retained_by_forward(model, batch) + sum(t.nbytes for t in batch.values())
    if not checkpointing:
        assert real == pytest.approx(estimate.activation_bytes, rel=0.02)
    else:
        # after a checkpointed forward, the largest unit's activations are not there yet (rebuilt in backward);
        # each checkpointed unit also keeps the CPU RNG state (5 KB)
        kept = estimate.checkpointed_activation_bytes - estimate.unit_activation_bytes
        assert abs(real - kept) <= 0.02 * kept + 6000 * estimate.num_units
        assert estimate.checkpointed_activation_bytes < 0.5 * estimate.activation_bytes


def test_parameter_counts_and_trainable_split():
    model = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG))
    batch = inputs(soft=False)
    full = meta_profile(batch)
    assert full.num_parameters == sum(p.numel() for p in model.parameters())
    assert full.num_units == CONFIG["num_spatial_layers"] + CONFIG["num_depth_layers"]
    block = sum(p.numel() for p in model.spatial_transformer.layers[0].parameters())
    assert full.unit_parameters == block
    assert full.root_parameters == full.num_parameters - block * full.num_units
    assert full.num_linear_parameters == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

    # freeze everything but the output head (as an adapter would): no gradients or optimizer state for the rest
    with torch.device("meta"):
        frozen = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG))
    frozen.requires_grad_(False)
    frozen.output_proj.requires_grad_(True)
    head = profile_training_memory(frozen, batch)
    assert head.num_trainable_parameters == sum(p.numel() for p in model.output_proj.parameters())
    assert head.unit_trainable_parameters == 0
    ddp, ddp_head = memory_per_device(full, "ddp", 4), memory_per_device(head, "ddp", 4)
    assert ddp_head.optimizer_state == 8 * head.num_trainable_parameters < ddp.optimizer_state
    assert ddp_head.weights == ddp.weights


def test_strategies_shard_the_states():
    estimate = meta_profile(inputs(soft=False))
    p = estimate.num_parameters
    ddp = memory_per_device(estimate, "ddp", 8)
    assert ddp.weights == 4 * p + 2 * estimate.num_linear_parameters
    assert ddp.gradients == ddp.optimizer_state == 8 * estimate.num_trainable_parameters
    assert memory_per_device(estimate, "ddp", 64).total == ddp.total  # replicas: no gain from more GPUs
    for strategy in ("fsdp", "zero3"):
        one, eight, many = (memory_per_device(estimate, strategy, n) for n in (1, 8, 64))
        assert eight.parameters_per_device == -(-p // 8)
        assert eight.optimizer_state == 8 * -(-estimate.num_trainable_parameters // 8)
        assert one.total > eight.total > many.total
        assert eight.activations == ddp.activations  # sharding the states does not shard activations
        assert eight.total < ddp.total


def test_official_sizes():
    names = {"imagenet_480M": 481, "imagenet_821M": 821, "imagenet_1.4B": 1388, "imagenet_3.8B_rqvae_50e": 3822}
    assert set(names) == set(OFFICIAL_IMAGENET_STAGE2)
    for name, millions in names.items():
        config = official_rq_transformer_config(name)
        with torch.device("meta"):
            model = RQTransformerForCausalImageModeling(config)
        trainable = sum(p.numel() for n, p in model.named_parameters() if n != "code_embeddings.weight")
        assert round(trainable / 1e6) == millions, name
    assert official_batch_size("imagenet_1.4B") == 8 and official_batch_size("imagenet_480M") == 32
    with pytest.raises(ValueError, match="`name` must be one of"):
        official_rq_transformer_config("imagenet_2B")


def test_bad_input():
    batch = inputs(soft=False)
    real = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG))
    with pytest.raises(ValueError, match="`model` must live on the meta device"):
        profile_training_memory(real, batch)
    with torch.device("meta"):
        model = RQTransformerForCausalImageModeling(RQTransformerConfig(**CONFIG))
    with pytest.raises(ValueError, match="`wrap_classes` must name"):
        profile_training_memory(model, batch, wrap_classes=["NoSuchBlock"])
    with pytest.raises(ValueError, match="scalar `loss`"):
        profile_training_memory(model, dict(codes=batch["codes"], class_labels=batch["class_labels"]))
    estimate = profile_training_memory(model, batch)
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        memory_per_device(estimate, "zero2", 8)
    with pytest.raises(ValueError, match="`num_processes` must be a positive integer, got 0"):
        memory_per_device(estimate, "fsdp", 0)
