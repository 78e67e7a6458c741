"""examples/train_rq_transformer.py end to end: a tiny RQ-VAE and 16x16 images made here (seconds per run).

Most runs call the script's ``main(argv)`` in this process (the accelerate singletons are reset between runs);
the kill-and-resume test runs the killed half as a subprocess (it SIGKILLs itself).
"""

import importlib.util
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from inject_faults import inject
from safetensors.torch import load_file
from script_helpers import TINY_RQVAE, flags_to_argv, read_metrics

from rq_hf.training.script_utils import NonFiniteLossError, reset_accelerate_state

pytest.importorskip("rq_hf.pipelines.pipeline_rq_transformer")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INJECT_FAULTS = os.path.join(REPO, "tests", "inject_faults.py")
SCRIPT = os.path.join(REPO, "examples", "train_rq_transformer.py")
CLASS_NAMES = ["left", "right"]

TINY_VAE = TINY_RQVAE


def load_script():
    spec = importlib.util.spec_from_file_location("train_rq_transformer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_script()


def make_images(n: int, size: int = 16, seed: int = 0):
    """Blobs on the left (class 0) or on the right (class 1): codes that depend on the class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels = [], []
    for i in range(n):
        label = i % 2
        cx = 0.3 if label == 0 else 0.7
        blob = np.exp(-((xx - cx) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2) / (2 * 0.15**2))
        images.append(PIL.Image.fromarray((255 * blob).astype(np.uint8), mode="L"))
        labels.append(label)
    return images, labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    root = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    vae = RQVAEModel(**TINY_VAE)
    vae.save_pretrained(str(root / "vae"))
    images, labels = make_images(32)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(root / "images"))
    # codes of the same images, as examples/extract_codes.py writes them (Array3D int32 + ClassLabel)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1)[None] for im in images])
    with torch.no_grad():
        encoded = vae.eval().encode(pixels)
    codes_features = datasets.Features(
        {
            "codes": datasets.Array3D(shape=(8, 8, 2), dtype="int32"),
            "label": datasets.ClassLabel(names=CLASS_NAMES),
        }
    )
    datasets.Dataset.from_dict(
        {"codes": encoded.codes.int().numpy(), "label": labels}, features=codes_features
    ).save_to_disk(str(root / "codes"))
    latents = encoded.latents.permute(0, 2, 3, 1).numpy()
    with_latents = datasets.Features({**codes_features, "latents": datasets.Array3D(shape=(8, 8, 8), dtype="float32")})
    datasets.Dataset.from_dict(
        {"codes": encoded.codes.int().numpy(), "label": labels, "latents": latents}, features=with_latents
    ).save_to_disk(str(root / "codes_latents"))
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate_state()


def base_args(data_dir, output_dir, steps=12, **overrides):
    args = {
        "--vqvae_model_name_or_path": str(data_dir / "vae"),
        "--dataset_name": str(data_dir / "images"),
        "--class_label_column": "label",
        "--resolution": "16",
        "--hidden_size": "32",
        "--num_attention_heads": "2",
        "--num_spatial_layers": "1",
        "--train_batch_size": "8",
        "--max_train_steps": str(steps),
        "--learning_rate": "3e-3",
        "--lr_warmup_steps": "2",
        "--checkpointing_steps": "6",
        "--validation_steps": "6",
        "--validation_fraction": "0.25",
        "--num_validation_images": "2",
        "--report_to": "none",
        "--output_dir": str(output_dir),
        "--seed": "0",
    }
    args.update(overrides)
    return flags_to_argv(args)


def losses(output_dir):
    return {m["step"]: m["loss"] for m in read_metrics(output_dir) if "loss" in m}


def transformer_state(output_dir):
    return load_file(os.path.join(output_dir, "transformer", "model.safetensors"))


@pytest.fixture(scope="module")
def image_run(data_dir):
    """Class-conditional, images encoded on the fly, EMA on: 12 steps, checkpoints at 6 and 12."""
    out = data_dir / "image_run"
    train.main(base_args(data_dir, out, **{"--use_ema": True, "--ema_decay": "0.5"}))
    reset_accelerate_state()
    return out


def test_class_conditional_run_saves_a_pipeline_that_samples(image_run):
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(str(image_run))
    assert pipe.id2label == dict(enumerate(CLASS_NAMES))  # the ClassLabel names are kept
    assert pipe.transformer.config.num_classes == 2 and pipe.transformer.config.class_dropout_prob == 0.1
    assert pipe.transformer.config.code_shape == [8, 8, 2]
    # code embeddings start from (and, frozen, stay) the RQ-VAE codebook
    torch.testing.assert_close(pipe.transformer.code_embeddings.weight, pipe.vqvae.quantizer.codebook(0))
    images = pipe(
        class_labels=["left", "right"],
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()

    by_step = losses(image_run)
    assert sorted(by_step) == list(range(1, 13))
    first, last = np.mean([by_step[s] for s in (1, 2, 3)]), np.mean([by_step[s] for s in (10, 11, 12)])
    assert last < first - 0.1, by_step
    logged = read_metrics(image_run)
    assert all("lr" in m and "grad_norm" in m for m in logged if "loss" in m)
    bits = [m["val/bits_per_code"] for m in logged if "val/bits_per_code" in m]
    assert len(bits) >= 2 and all(0 < b < 10 for b in bits)
    grid = PIL.Image.open(image_run / "validation" / "step_000012.png")
    assert grid.size == (2 * 16, 2 * 16)  # one row per class, --num_validation_images columns
    card = (image_run / "README.md").read_text()
    assert "bits per code" in card and "left" in card


def test_ema_weights_are_saved_and_checkpointed(image_run):
    saved = transformer_state(image_run)
    raw = load_file(os.path.join(image_run, "checkpoint-12", "model.safetensors"))
    ema = torch.load(os.path.join(image_run, "checkpoint-12", "custom_checkpoint_1.pkl"), weights_only=False)
    key = "output_proj.weight"
    torch.testing.assert_close(saved[key], ema[f"module.{key}"])  # the final model is the EMA model
    assert not torch.allclose(saved[key], raw[key])  # ... which differs from the raw weights


def test_run_from_codes_dataset(data_dir, tmp_path):
    out = tmp_path / "codes_run"
    args = base_args(
        data_dir,
        out,
        steps=6,
        **{"--dataset_name": None, "--resolution": None, "--codes_dataset": str(data_dir / "codes")},
    )
    train.main(args)
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["id2label"] == {"0": "left", "1": "right"}
    assert sorted(losses(out)) == list(range(1, 7))
    assert (out / "model_index.json").is_file() and (out / "vqvae" / "config.json").is_file()


def test_fine_tune_a_trained_transformer_and_push(data_dir, image_run, tmp_path, monkeypatch):
    """--model_config_name_or_path <trained transformer> continues from its weights; --push_to_hub uploads
    output_dir with its card (recorded here: no network in tests)."""
    from test_script_utils import RecordingApi

    monkeypatch.setattr(RecordingApi, "uploads", [])
    monkeypatch.setattr("rq_hf.models.hub_utils.HfApi", RecordingApi)
    out = tmp_path / "fine_tuned"
    overrides = {
        "--dataset_name": None,
        "--resolution": None,
        "--codes_dataset": str(data_dir / "codes"),
        "--model_config_name_or_path": str(image_run / "transformer"),
        "--hidden_size": None,
        "--num_attention_heads": None,
        "--num_spatial_layers": None,
        "--learning_rate": "1e-4",
        "--push_to_hub": True,
        "--hub_model_id": "someone/rq-transformer-test",
    }
    train.main(base_args(data_dir, out, steps=2, **overrides))
    before, after = transformer_state(image_run), transformer_state(out)
    change = (after["output_proj.weight"] - before["output_proj.weight"]).abs().max()
    assert 0 < change < 0.01  # started from the trained weights (a new model would differ by ~0.02 anyway)
    (pushed,) = RecordingApi.uploads
    assert pushed["repo_id"] == "someone/rq-transformer-test" and pushed["folder"] == str(out)
    assert pushed["card"] == (out / "README.md").read_text()
    for text in ("validation NLL (bits per code)", "0: left, 1: right", "## Training"):
        assert text in pushed["card"], text
    assert "model_index.json" in pushed["files"] and not any(f.startswith("checkpoint-") for f in pushed["files"])
    reset_accelerate_state()
    with pytest.raises(ValueError, match="trained model.*--hidden_size"):
        train.main(base_args(data_dir, tmp_path / "x", **{**overrides, "--hidden_size": "64", "--push_to_hub": None}))


def test_config_without_rqvae_sizes_takes_them_from_the_rqvae(data_dir, tmp_path):
    from rq_hf import RQTransformerConfig

    config_dir = tmp_path / "config"  # sizes, layers and classes only, as a user writes it
    RQTransformerConfig(hidden_size=32, num_attention_heads=2, num_spatial_layers=1, num_depth_layers=1,
                        num_classes=2).save_pretrained(config_dir)
    out = tmp_path / "run"
    train.main(base_args(data_dir, out, steps=2, **{"--model_config_name_or_path": str(config_dir)}))
    saved = json.loads((out / "transformer" / "config.json").read_text())
    assert (saved["vocab_size"], saved["code_shape"], saved["code_embedding_dim"]) == (32, [8, 8, 2], 8)


def test_soft_labels_run(data_dir, tmp_path):
    out = tmp_path / "soft"
    train.main(
        base_args(
            data_dir, out, steps=6, **{"--soft_labels": True, "--class_label_column": None, "--mixed_precision": "bf16"}
        )
    )
    by_step = losses(out)
    assert sorted(by_step) == list(range(1, 7)) and all(np.isfinite(v) for v in by_step.values())
    assert json.loads((out / "transformer" / "config.json").read_text())["num_classes"] is None


def test_soft_labels_from_codes_need_latents(data_dir, tmp_path):
    codes = {"--dataset_name": None, "--resolution": None, "--soft_labels": True}
    with pytest.raises(ValueError, match="--soft_labels.*latents"):
        train.main(base_args(data_dir, tmp_path / "a", **codes, **{"--codes_dataset": str(data_dir / "codes")}))
    reset_accelerate_state()
    out = tmp_path / "b"
    train.main(base_args(data_dir, out, steps=2, **codes, **{"--codes_dataset": str(data_dir / "codes_latents")}))
    assert sorted(losses(out)) == [1, 2]


def test_resume_after_sigkill_matches_uninterrupted_run(data_dir, image_run, tmp_path):
    out = tmp_path / "killed"
    args = base_args(data_dir, out, **{"--use_ema": True, "--ema_decay": "0.5"})
    proc = subprocess.run(
        [sys.executable, INJECT_FAULTS, "--sigkill_after_step", "6", SCRIPT, *args], env=script_env(),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / "checkpoint-6").is_dir() and not (out / "model_index.json").exists()

    train.main(args + ["--resume_from_checkpoint", "latest"])
    steps = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert steps == list(range(1, 13))  # 1..6 before the kill, 7..12 after: continued at the saved step
    full, again = losses(image_run), losses(out)
    np.testing.assert_allclose([again[s] for s in range(7, 13)], [full[s] for s in range(7, 13)], rtol=1e-4)
    a, b = transformer_state(image_run), transformer_state(out)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="--label_column.*'species'.*available columns"):
        train.main(base_args(data_dir, tmp_path / "a", **{"--class_label_column": "species"}))
    reset_accelerate_state()
    bad_config = tmp_path / "config.json"
    bad_config.write_text(json.dumps({"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 2}))
    with pytest.raises(ValueError, match="vocab_size=64.*vocab_size=32"):
        train.main(base_args(data_dir, tmp_path / "b", **{"--model_config_name_or_path": str(bad_config)}))
    reset_accelerate_state()
    with pytest.raises(ValueError, match="--codes_dataset"):
        train.parse_args(base_args(data_dir, tmp_path / "c", **{"--codes_dataset": str(data_dir / "codes")}))
    with pytest.raises(ValueError, match="--class_dropout_prob"):
        train.parse_args(
            base_args(data_dir, tmp_path / "d", **{"--class_label_column": None, "--class_dropout_prob": "0.1"})
        )
    with pytest.raises(ValueError, match="--resolution"):
        train.main(base_args(data_dir, tmp_path / "e", **{"--resolution": "15"}))


def script_env():
    src = os.path.join(REPO, "src")
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), src) if p),
    )


@pytest.mark.slow
def test_two_process_run_keeps_identical_weights_and_loss_goes_down(data_dir, tmp_path):
    """Two real CPU processes (torchrun + gloo): the wrapped (DDP) model is what the loop calls, so every
    parameter gets its gradient all-reduced and both processes end with the same transformer."""
    out = tmp_path / "ddp"
    launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = base_args(
        data_dir,
        out,
        steps=10,
        **{
            "--train_batch_size": "4",
            "--checkpointing_steps": "100",
            "--validation_steps": "100",
        },
    )
    cmd = [launcher, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), INJECT_FAULTS,
           "--dump_state_to", str(out / "debug"), SCRIPT, *args]
    proc = subprocess.run(
        cmd, env=dict(script_env(), ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = load_file(os.path.join(out, "debug", "rank0.safetensors"))
    rank1 = load_file(os.path.join(out, "debug", "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    torch.testing.assert_close(rank0["output_proj.weight"], transformer_state(out)["output_proj.weight"])
    by_step = losses(out)
    assert sorted(by_step) == list(range(1, 11))
    assert np.mean([by_step[9], by_step[10]]) < np.mean([by_step[1], by_step[2]]) - 0.1, by_step


def test_nonfinite_loss_stops_before_the_update_and_names_the_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    inject(monkeypatch.setattr, nan_at_step=5)
    with pytest.raises(NonFiniteLossError, match=r"step 5.*checkpoint-3"):
        train.main(base_args(data_dir, out, **{"--checkpointing_steps": "3"}))
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert (out / "checkpoint-3").is_dir() and not (out / "model_index.json").exists()


def test_undecodable_image_is_counted_and_skipped(data_dir, tmp_path):
    images, labels = make_images(8)
    rows = {
        "image": [{"bytes": b"not an image", "path": "broken.png"}]
        + [{"bytes": _png_bytes(im), "path": None} for im in images[1:]],
        "label": labels,
    }
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "broken"))
    out = tmp_path / "skip"
    train.main(
        base_args(
            data_dir,
            out,
            steps=2,
            **{"--dataset_name": str(tmp_path / "broken"), "--validation_fraction": "0", "--train_batch_size": "8"},
        )
    )
    logged = read_metrics(out)
    # 8 rows, batch 8: each of the 2 steps is one epoch and meets the broken row once
    assert [m["num_skipped_images"] for m in logged if "loss" in m] == [1, 2]
    assert (out / "model_index.json").is_file()


def _png_bytes(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_help_lists_the_stage2_flags():
    help_text = train.build_parser().format_help()
    for flag in (
        "--vqvae_model_name_or_path",
        "--codes_dataset",
        "--class_label_column",
        "--class_dropout_prob",
        "--soft_labels",
        "--soft_label_temperature",
        "--use_ema",
        "--guidance_scale",
        "--top_k",
        "--validation_split",
        "--push_to_hub",
        "--resume_from_checkpoint",
        "--caption_column",
        "--tokenizer_name_or_path",
        "--caption_dropout_prob",
        "--text_loss_weight",
        "--validation_prompts",
    ):
        assert flag in help_text, flag


def test_weight_decay_only_on_linear_weights():
    from rq_hf.models.configuration_rq_transformer import RQTransformerConfig
    from rq_hf.models.modeling_rq_transformer import RQTransformerForCausalImageModeling

    config = RQTransformerConfig(
        vocab_size=32,
        code_shape=[2, 2, 2],
        hidden_size=16,
        num_spatial_layers=1,
        num_depth_layers=1,
        num_attention_heads=2,
        code_embedding_dim=8,
        num_classes=2,
    )
    model = RQTransformerForCausalImageModeling(config)
    model.code_embeddings.weight.requires_grad_(False)  # frozen codebook copy: not optimised at all
    decay, no_decay = train.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "output_proj.weight" in decayed and "spatial_input_proj.weight" in decayed
    assert all(n.endswith(".weight") for n in decayed)
    assert {
        "output_proj.bias",
        "output_norm.weight",
        "condition_embedding.weight",
        "spatial_position_embedding",
    } <= not_decayed
    assert "code_embeddings.weight" not in decayed | not_decayed
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | not_decayed == trainable and not decayed & not_decayed
