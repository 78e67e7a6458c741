"""LoRA fine-tuning of the RQ-Transformer (rq_hf.lora, train_rq_transformer.py --use_lora) and
--gradient_checkpointing in the script: tiny models and 16x16 images made here (seconds per run)."""

import hashlib
import os
import shutil

import datasets
import numpy as np
import pytest
import torch
from inject_faults import inject
from safetensors.torch import load_file
from script_helpers import TINY_RQVAE, flags_to_argv, load_example, read_metrics, save_blob_dataset
from tiny_models import tiny_transformer

from rq_hf.training.script_utils import reset_accelerate_state

peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[lora]'")

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQTransformerPipeline  # noqa: E402
from rq_hf.lora import CHECKPOINT_ADAPTER_DIR, add_lora_adapter  # noqa: E402

train = load_example("train_rq_transformer")
RANK, ALPHA = 4, 8


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate_state()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny RQ-VAE, a 'trained' class-conditional transformer for it (2 classes) and a pipeline of both, plus
    an image dataset of class 1 only: the new class subset the adapter is fine-tuned on."""
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    vae = RQVAEModel(**TINY_RQVAE).eval()
    vae.save_pretrained(str(root / "vae"))
    config = RQTransformerConfig(vocab_size=32, code_shape=[8, 8, 2], hidden_size=32, num_spatial_layers=2,
                                 num_depth_layers=1, num_attention_heads=2, num_classes=2, resid_dropout=0.0,
                                 code_embedding_dim=8, id2label={0: "left", 1: "right"})
    torch.manual_seed(1)
    transformer = RQTransformerForCausalImageModeling(config)
    transformer.init_code_embeddings(vae)
    with torch.no_grad():
        transformer.output_proj.weight.mul_(10)  # a sharp base model: samples depend on the weights, not on noise
    RQTransformerPipeline(vqvae=vae, transformer=transformer).save_pretrained(str(root / "pipeline"))
    save_blob_dataset(root / "all", n=32)
    datasets.load_from_disk(str(root / "all")).filter(lambda row: row["label"] == 1).save_to_disk(str(root / "right"))
    return root


def lora_args(base, output_dir, steps=8, **overrides):
    args = {
        "--vqvae_model_name_or_path": str(base / "pipeline" / "vqvae"),
        "--model_config_name_or_path": str(base / "pipeline" / "transformer"),
        "--dataset_name": str(base / "right"),
        "--class_label_column": "label",
        "--resolution": "16",
        "--use_lora": True,
        "--lora_rank": str(RANK),
        "--lora_alpha": str(ALPHA),
        "--train_batch_size": "4",
        "--max_train_steps": str(steps),
        "--learning_rate": "1e-2",
        "--lr_warmup_steps": "0",
        "--checkpointing_steps": "4",
        "--validation_steps": "100",
        "--validation_fraction": "0",
        "--num_validation_images": "1",
        "--report_to": "none",
        "--output_dir": str(output_dir),
        "--seed": "0",
    }
    args.update(overrides)
    return flags_to_argv(args)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def lora_run(base):
    """8 LoRA steps on class 1 only, checkpoints at 4 and 8, the final model dumped (tests/inject_faults.py)."""
    out = base / "lora_run"
    base_weights = base / "pipeline" / "transformer" / "model.safetensors"
    before = sha(base_weights)
    with pytest.MonkeyPatch.context() as patch:
        inject(patch.setattr, dump_state_to=str(out / "debug"))
        train.main(lora_args(base, out))
    reset_accelerate_state()
    assert sha(base_weights) == before  # the base model is read, never written
    return out


def base_pipeline(base):
    pipe = RQTransformerPipeline.from_pretrained(str(base / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def logits(transformer, seed=0):
    codes = torch.randint(0, 32, (3, 8, 8, 2), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return transformer(codes=codes, class_labels=torch.tensor([0, 1, 1])).logits


def test_adapter_folder_is_small_and_holds_only_lora_weights(base, lora_run):
    assert (lora_run / "adapter_config.json").is_file() and not (lora_run / "model_index.json").exists()
    adapter = load_file(str(lora_run / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    layers = {k.split(".lora_")[0] for k in adapter}
    assert len(layers) == 3 * 6  # 2 spatial + 1 depth blocks x query, key, value, out_proj, fc_in, fc_out
    adapter_bytes = os.path.getsize(lora_run / "adapter_model.safetensors")
    full_bytes = os.path.getsize(base / "pipeline" / "transformer" / "model.safetensors")
    print(f"adapter {adapter_bytes} bytes, full transformer {full_bytes} bytes")
    assert adapter_bytes * 3 < full_bytes
    losses = [m["loss"] for m in read_metrics(lora_run) if "loss" in m]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])  # the adapter learns the subset


def test_fine_tuned_samples_change_and_frozen_weights_stay(base, lora_run):
    pipe = base_pipeline(base)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    kwargs = dict(class_labels=[1, 1, 0], output_type="latent", guidance_scale=1.0)
    codes_base = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(lora_run))
    codes_lora = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert (codes_lora != codes_base).float().mean() > 0.1
    dumped = load_file(str(lora_run / "debug" / "rank0.safetensors"))
    for name, value in before.items():  # code embeddings, norms, projections: exactly the base model's
        name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if name not in dumped else name
        torch.testing.assert_close(dumped[name], value, rtol=0, atol=0)


def test_base_plus_adapter_reproduces_the_fine_tuned_logits_exactly(base, lora_run):
    dumped = load_file(str(lora_run / "debug" / "rank0.safetensors"))  # the trained model, as the script ended
    fine_tuned = add_lora_adapter(base_pipeline(base).transformer, RANK, ALPHA)
    fine_tuned.get_base_model().load_state_dict(
        {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): v
         for k, v in dumped.items()}, strict=True)
    expected = logits(fine_tuned.get_base_model().eval())

    pipe = base_pipeline(base)
    pipe.load_lora_weights(str(lora_run))
    assert torch.equal(logits(pipe.transformer), expected)
    reloaded = peft.PeftModel.from_pretrained(base_pipeline(base).transformer, str(lora_run))  # the peft way
    assert torch.equal(logits(reloaded.eval()), expected)
    assert not torch.allclose(logits(base_pipeline(base).transformer), expected, atol=1e-3)


def test_fuse_and_unfuse_round_trip(base, lora_run):
    pipe = base_pipeline(base)
    base_logits = logits(pipe.transformer)
    base_weight = pipe.transformer.spatial_transformer.layers[0].attn.query.weight.detach().clone()
    pipe.load_lora_weights(str(lora_run))
    query = pipe.transformer.spatial_transformer.layers[0].attn.query  # now a peft LoRA layer
    adapted = logits(pipe.transformer)
    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1 and not torch.allclose(query.base_layer.weight, base_weight)
    torch.testing.assert_close(logits(pipe.transformer), adapted, rtol=1e-5, atol=1e-4)
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    torch.testing.assert_close(query.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(pipe.transformer), adapted, rtol=1e-5, atol=1e-4)
    pipe.unload_lora_weights()
    assert type(pipe.transformer.spatial_transformer.layers[0].attn.query) is torch.nn.Linear
    torch.testing.assert_close(logits(pipe.transformer), base_logits, rtol=1e-5, atol=1e-4)


def test_a_fused_adapter_saves_as_a_plain_pipeline(base, lora_run, tmp_path):
    pipe = base_pipeline(base)
    pipe.save_pretrained(str(tmp_path / "merged"))  # the base first, then a refused save: the folder stays intact
    pipe.load_lora_weights(str(lora_run))
    adapted = logits(pipe.transformer)
    before = sha(tmp_path / "merged" / "transformer" / "model.safetensors")
    with pytest.raises(ValueError, match=r"`save_pretrained` needs a pipeline without LoRA layers"):
        pipe.save_pretrained(str(tmp_path / "merged"))
    assert sha(tmp_path / "merged" / "transformer" / "model.safetensors") == before
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(str(tmp_path / "merged"))
    merged = RQTransformerPipeline.from_pretrained(str(tmp_path / "merged"))  # strict: the model's own weight names
    torch.testing.assert_close(logits(merged.transformer), adapted, rtol=1e-5, atol=1e-4)


def test_checkpoints_hold_the_adapter_and_resume(base, lora_run, tmp_path):
    checkpoint = lora_run / "checkpoint-4"
    assert (checkpoint / CHECKPOINT_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.bin").is_file()
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(checkpoint, out / "checkpoint-4")
    train.main(lora_args(base, out, **{"--resume_from_checkpoint": "latest"}))
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [5, 6, 7, 8]
    full, resumed = (load_file(str(d / "adapter_model.safetensors")) for d in (lora_run, out))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_bf16_and_lora_together_in_the_script(base, tmp_path):
    out = tmp_path / "gc_bf16"
    train.main(lora_args(base, out, steps=3, **{"--gradient_checkpointing": True, "--mixed_precision": "bf16",
                                                 "--checkpointing_steps": "100"}))
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses) == 3 and np.isfinite(losses).all()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]  # zero at the start: trained only through the backward
    assert len(lora_b) == 18 and all(v.abs().max() > 0 for v in lora_b)


def test_gradient_checkpointing_bf16_autocast_and_lora_give_the_same_gradients():
    """Checkpointed blocks under bf16 autocast: LoRA gets the same gradients as without checkpointing, the frozen
    weights none."""
    grads = {}
    for checkpointing in (False, True):
        model = tiny_transformer(num_classes=3)
        if checkpointing:
            model.activation_checkpointing_enable()
        lora = add_lora_adapter(model, 2, 4, prefix="").train()
        with torch.no_grad():  # non-zero B, so that the A matrices get gradients too
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        codes = torch.randint(0, 32, (2, 4, 4, 2), generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lora(codes=codes, class_labels=torch.tensor([0, 2]), labels=codes).loss
        loss.backward()
        assert all(p.grad is None for n, p in lora.named_parameters() if "lora_" not in n)
        grads[checkpointing] = {n: p.grad for n, p in lora.named_parameters() if "lora_" in n}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) == 2 * 6 * 2
    for name, grad in grads[False].items():
        assert grad.abs().max() > 0
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-2, atol=1e-3)


def test_gradient_checkpointing_alone_in_the_script(base, tmp_path):
    """--gradient_checkpointing (no LoRA) trains the whole model with the same losses as without it."""
    runs = {}
    for flag in (None, True):
        out = tmp_path / f"gc_{flag}"
        train.main(lora_args(base, out, steps=3, **{"--use_lora": None, "--gradient_checkpointing": flag,
                                                     "--learning_rate": "1e-3", "--checkpointing_steps": "100"}))
        reset_accelerate_state()
        runs[flag] = [m["loss"] for m in read_metrics(out) if "loss" in m]
        assert (out / "model_index.json").is_file()
    np.testing.assert_allclose(runs[True], runs[None], rtol=1e-5)
    assert len(runs[True]) == 3


def test_bad_lora_arguments_are_named(base, tmp_path):
    cases = {
        "--lora_rank": ("0", r"`--lora_rank` must be a positive integer, got 0"),
        "--lora_alpha": ("-1", r"`--lora_alpha` must be a number > 0, got -1.0"),
        "--lora_dropout": ("1.5", r"`--lora_dropout` must be in \[0, 1\), got 1.5"),
        "--model_config_name_or_path": (None, r"`--use_lora` needs a trained transformer"),
        "--use_ema": (True, r"`--use_ema` is not supported with `--use_lora`"),
        "--train_code_embeddings": (True, r"`--train_code_embeddings` is not supported with `--use_lora`"),
    }
    for flag, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            train.parse_args(lora_args(base, tmp_path / "x", **{flag: value}))
    with pytest.raises(ValueError, match=r"`--lora_target_modules` must name nn.Linear layers .*got \['attention'\]"):
        train.main(lora_args(base, tmp_path / "y", **{"--lora_target_modules": "attention"}))
    reset_accelerate_state()
    config = tmp_path / "config.json"
    config.write_text('{"hidden_size": 32, "num_attention_heads": 2}')
    with pytest.raises(ValueError, match=r"`--use_lora` needs a trained transformer.*is a config"):
        train.main(lora_args(base, tmp_path / "z", **{"--model_config_name_or_path": str(config)}))
    with pytest.raises(ValueError, match=r"`lora_rank` must be a positive integer, got 2.5"):
        add_lora_adapter(tiny_transformer(), 2.5, 4, prefix="")
    pipe = base_pipeline(base)
    with pytest.raises(ValueError, match="must be a LoRA adapter folder"):
        pipe.load_lora_weights(str(base / "pipeline" / "transformer"))


def test_memory_of_a_lora_fine_tune_on_the_meta_device(capsys):
    """rq_hf.training.memory sizes a LoRA model: only the adapters get gradients and optimizer state; the
    benchmark's --lora-rank path runs (one GPU: the DDP row only)."""
    from rq_hf.training.memory import memory_per_device

    bench = load_example("../benchmarks/bench_memory")
    config = tiny_transformer().config
    full = bench.profile(config, 2, hard_labels=True)
    lora = bench.profile(config, 2, hard_labels=True, lora_rank=2)
    with torch.device("meta"):
        expected = add_lora_adapter(RQTransformerForCausalImageModeling(config), 2, 4)
    adapters = sum(p.numel() for n, p in expected.named_parameters() if "lora_" in n)
    assert lora.num_trainable_parameters == adapters == 2 * 2 * (4 * (16 + 16) + (16 + 64) + (64 + 16))  # 2 blocks, r 2
    assert lora.num_parameters == full.num_parameters + adapters
    one_gpu_full, one_gpu_lora = memory_per_device(full, "ddp", 1), memory_per_device(lora, "ddp", 1)
    assert one_gpu_lora.optimizer_state == 8 * adapters and one_gpu_lora.gradients == 8 * adapters
    assert one_gpu_lora.total < one_gpu_full.total
    bench.main(["--quick", "--num-gpus", "1", "--lora-rank", "2"])
    table = capsys.readouterr().out
    assert "LoRA rank 2" in table and "| DDP |" in table and "FSDP" not in table


def test_adapter_folder_has_the_rq_hf_card(lora_run):
    card = (lora_run / "README.md").read_text()
    for text in ("library_name: peft", "# LoRA adapter of an RQ-Transformer", "pipe.load_lora_weights(", "## Training",
                 "LoRA adapter (rank", "\"rank\": 4"):
        assert text in card, text
