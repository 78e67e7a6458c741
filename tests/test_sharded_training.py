"""Sharded training: examples/train_rq_transformer.py under `accelerate launch` with an FSDP2 config, on two
CPU processes (gloo). A tiny RQ-VAE and transformer; each launch takes several seconds.

Checked: the checkpoint holds one shard per process, a run killed after its checkpoint resumes
(`--resume_from_checkpoint latest`) to the weights and losses of an uninterrupted run, and the final folder is
the usual pipeline (`from_pretrained` loads it; the frozen code embeddings are still the RQ-VAE codebook).
Without launching anything: the shipped configs in examples/configs/ load in accelerate and fit the model, and
what `rq_hf.training.sharding` changes in accelerate's FSDP plugin.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from script_helpers import TINY_RQVAE, flags_to_argv, read_metrics, save_blob_dataset

from rq_hf.training.script_utils import CHECKPOINT_MANIFEST, checkpoint_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INJECT_FAULTS = os.path.join(REPO, "tests", "inject_faults.py")
SCRIPT = os.path.join(REPO, "examples", "train_rq_transformer.py")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")

CONFIGS = os.path.join(REPO, "examples", "configs")
CONFIG = os.path.join(CONFIGS, "fsdp.yaml")


def cpu_fsdp_missing() -> str | None:
    """What this installation lacks to shard on two CPU processes, or None."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with the gloo backend"
    if importlib.util.find_spec("torch.distributed.fsdp") is None:
        return "torch.distributed.fsdp"
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        return f"FSDP2 (torch.distributed.fsdp.fully_shard; torch {torch.__version__})"
    import accelerate
    from accelerate import FullyShardedDataParallelPlugin

    if "fsdp_version" not in FullyShardedDataParallelPlugin.__dataclass_fields__:
        return f"FSDP2 in accelerate's FSDP plugin (accelerate {accelerate.__version__})"
    if not os.path.isfile(ACCELERATE):
        return f"the `accelerate` launcher beside {sys.executable}"
    return None


needs_cpu_fsdp = pytest.mark.skipif(cpu_fsdp_missing() is not None, reason=f"needs {cpu_fsdp_missing()}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    root = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    RQVAEModel(**TINY_RQVAE).save_pretrained(str(root / "vae"))
    save_blob_dataset(root / "images", n=32)
    with open(CONFIG) as f:  # the shipped config, on 2 processes, in fp32 (bf16 sums differ with the order)
        config = yaml.safe_load(f)
    config.update(num_processes=2, mixed_precision="no")
    (root / "fsdp.yaml").write_text(yaml.safe_dump(config))
    return root


def launch(root, output_dir, faults=(), **extra):
    """`accelerate launch` the script; `faults` are flags of tests/inject_faults.py, which then wraps it."""
    flags = {
        "--vqvae_model_name_or_path": str(root / "vae"),
        "--dataset_name": str(root / "images"),
        "--class_label_column": "label",
        "--resolution": "16",
        "--hidden_size": "32",
        "--num_attention_heads": "2",
        "--num_spatial_layers": "2",
        "--train_batch_size": "4",
        "--max_train_steps": "6",
        "--learning_rate": "3e-3",
        "--lr_warmup_steps": "2",
        "--checkpointing_steps": "3",
        "--validation_steps": "3",  # a mid-run validation: the shards are gathered on every process
        "--validation_fraction": "0.25",
        "--num_validation_images": "1",
        "--report_to": "none",
        "--output_dir": str(output_dir),
        "--seed": "0",
        **extra,
    }
    port = str(29800 + os.getpid() % 150 + 50 * ("--resume_from_checkpoint" in extra))
    cmd = [ACCELERATE, "launch", "--config_file", str(root / "fsdp.yaml"), "--main_process_port", port,
           *([INJECT_FAULTS, *faults] if faults else []), SCRIPT, *flags_to_argv(flags)]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=os.path.join(REPO, "src"))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def losses(output_dir):
    return {m["step"]: m["loss"] for m in read_metrics(output_dir) if "loss" in m}


@pytest.fixture(scope="module")
def full_run(setup):
    out = setup / "full"
    proc = launch(setup, out, **{"--checkpoints_total_limit": "1"})  # rotation after the new one is complete
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


@pytest.mark.slow
@needs_cpu_fsdp
def test_sharded_checkpoint_has_one_shard_per_process_and_a_manifest(full_run):
    checkpoint = full_run / "checkpoint-6"
    assert checkpoint_problem(str(checkpoint)) is None
    assert not (full_run / "checkpoint-3").exists()  # --checkpoints_total_limit 1
    manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())["files"]
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):  # torch.distributed.checkpoint: a file per rank
        assert {f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp", f"{folder}/.metadata"} <= set(manifest)
    assert not (checkpoint / "model.safetensors").exists()  # no gathered copy in the checkpoint
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(checkpoint / "pytorch_model_fsdp_0")).read_metadata()
    chunks = {key: [tuple(c.sizes) for c in meta.chunks] for key, meta in metadata.state_dict_metadata.items()}
    assert chunks["model.spatial_transformer.layers.0.mlp.fc_in.weight"] == [(64, 32), (64, 32)]  # halves
    assert chunks["model.output_proj.weight"] == [(16, 32), (16, 32)]
    assert chunks["model.code_embeddings.weight"] == [(32, 8)]  # frozen: left out of the sharding, whole
    assert sorted(losses(full_run)) == list(range(1, 7))


@pytest.mark.slow
@needs_cpu_fsdp
def test_final_folder_is_the_usual_pipeline_and_code_embeddings_stay_the_codebook(full_run, setup):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    assert (full_run / "transformer" / "model.safetensors").is_file()
    pipe = RQTransformerPipeline.from_pretrained(str(full_run))
    transformer = pipe.transformer
    assert transformer.config.num_spatial_layers == 2 and transformer.dtype == torch.float32
    codebook = RQVAEModel.from_pretrained(str(setup / "vae")).quantizer.codebook(0)
    torch.testing.assert_close(transformer.code_embeddings.weight, codebook, rtol=0, atol=0)  # frozen, whole
    images = pipe(class_labels=[0, 1], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


@pytest.mark.slow
@needs_cpu_fsdp
def test_killed_run_resumes_from_the_sharded_checkpoint_to_the_same_weights(full_run, setup):
    out = setup / "killed"
    proc = launch(setup, out, faults=["--sigkill_after_step", "3"])
    assert proc.returncode != 0 and (out / "checkpoint-3").is_dir(), proc.stderr[-3000:]
    assert not (out / "model_index.json").exists()
    proc = launch(setup, out, **{"--resume_from_checkpoint": "latest"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Resuming from" in proc.stderr and "checkpoint-3" in proc.stderr
    steps = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert steps == list(range(1, 7))  # 1..3 before the kill, 4..6 after
    full, again = losses(full_run), losses(out)
    np.testing.assert_allclose([again[s] for s in (4, 5, 6)], [full[s] for s in (4, 5, 6)], rtol=1e-5)
    a = load_file(str(full_run / "transformer" / "model.safetensors"))
    b = load_file(str(out / "transformer" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fsdp.yaml", "fsdp_multinode.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_shipped_configs_load_in_accelerate_and_fit_the_model(name):
    from accelerate.commands.config.config_args import load_config_from_file

    from rq_hf.models import modeling_rq_transformer

    config = load_config_from_file(os.path.join(CONFIGS, name))  # accelerate's own parser: unknown keys raise
    if name.startswith("fsdp"):
        assert config.distributed_type.value == "FSDP" and config.fsdp_config["fsdp_version"] == 2
        block = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert block in modeling_rq_transformer.RQTransformerForCausalImageModeling._no_split_modules
        assert hasattr(modeling_rq_transformer, block)
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert config.num_machines == (2 if "multinode" in name else 1)
        return
    assert config.distributed_type.value == "DEEPSPEED"
    ds_file = config.deepspeed_config["deepspeed_config_file"]  # relative to the repository root
    with open(os.path.join(REPO, ds_file)) as f:
        ds_config = json.load(f)
    stage = 2 if "zero2" in name else 3
    assert ds_config["zero_optimization"]["stage"] == stage
    if stage == 3:  # the final save gathers the weights (accelerator.get_state_dict)
        assert ds_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if importlib.util.find_spec("deepspeed") is None:
        return
    import argparse

    from accelerate import DeepSpeedPlugin

    from rq_hf.training.sharding import fill_deepspeed_config

    plugin = DeepSpeedPlugin(hf_ds_config=os.path.join(REPO, ds_file))
    assert plugin.zero_stage == stage
    filled = fill_deepspeed_config(plugin, argparse.Namespace(train_batch_size=4, max_grad_norm=0.5))
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_clipping"] == 0.5
    assert fill_deepspeed_config(plugin, argparse.Namespace(train_batch_size=4, max_grad_norm=0))[
        "gradient_clipping"] == 0.5  # no longer "auto": a value in the config is kept


def tiny_transformer(freeze_code_embeddings=True):
    from rq_hf.models.configuration_rq_transformer import RQTransformerConfig
    from rq_hf.models.modeling_rq_transformer import RQTransformerForCausalImageModeling

    config = RQTransformerConfig(vocab_size=16, code_shape=[2, 2, 2], code_embedding_dim=4, hidden_size=8,
                                 num_attention_heads=2, num_spatial_layers=1, num_depth_layers=1)
    model = RQTransformerForCausalImageModeling(config)
    if freeze_code_embeddings:
        model.init_code_embeddings(torch.randn(16, 4), freeze=True)
    return model


def test_frozen_code_embeddings_are_what_fsdp_leaves_out():
    from rq_hf.training.sharding import _frozen_submodules

    model = tiny_transformer(freeze_code_embeddings=False)
    assert model.get_input_embeddings() is model.code_embeddings
    assert _frozen_submodules(model) == []
    model.init_code_embeddings(torch.randn(16, 4), freeze=True)
    assert _frozen_submodules(model) == [model.code_embeddings]
    model.spatial_transformer.requires_grad_(False)  # the outermost frozen module, not its blocks
    assert _frozen_submodules(model) == [model.code_embeddings, model.spatial_transformer]


def fake_accelerator(kind, plugin=None):
    import types

    from accelerate.utils import DistributedType

    state = types.SimpleNamespace(fsdp_plugin=plugin)
    return types.SimpleNamespace(distributed_type=DistributedType[kind], state=state)


def test_configure_sharding_sets_the_plugin_and_refuses_what_does_not_shard():
    import argparse

    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from rq_hf.training.sharding import configure_sharding, require_unsharded

    model = tiny_transformer()
    # a config without a wrap policy and with rank-0-only loading: blocks become the units, frozen parts stay out
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_ram_efficient_loading=True)
    assert plugin.auto_wrap_policy is None
    configure_sharding(fake_accelerator("FSDP", plugin), model, argparse.Namespace(use_ema=False))
    assert plugin.ignored_modules == [model.code_embeddings] and plugin.cpu_ram_efficient_loading is False
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    plugin.set_auto_wrap_policy(model)  # what accelerate does in prepare
    assert plugin.transformer_cls_names_to_wrap == ["RQTransformerBlock"]

    unsharded = FullyShardedDataParallelPlugin(fsdp_version=2)
    configure_sharding(fake_accelerator("MULTI_GPU", unsharded), model, None)  # DDP: nothing changes
    assert unsharded.ignored_modules is None and unsharded.auto_wrap_policy is None
    with pytest.raises(ValueError, match="--use_ema.*sharded"):
        configure_sharding(fake_accelerator("FSDP", plugin), model, argparse.Namespace(use_ema=True))
    with pytest.raises(ValueError, match="--use_lora.*sharded.*DEEPSPEED"):
        configure_sharding(fake_accelerator("DEEPSPEED"), model, argparse.Namespace(use_ema=False, use_lora=True))
    with pytest.raises(ValueError, match="train_rqvae.py does not run sharded.*adaptive weight"):
        require_unsharded(fake_accelerator("DEEPSPEED"), "train_rqvae.py", "the adaptive weight")
    require_unsharded(fake_accelerator("MULTI_CPU"), "train_rqvae.py", "the adaptive weight")  # no error
