"""examples/train_rqvae.py end to end, with a tiny model on 16x16 images made here (seconds per run)."""

import json
import os
import signal
import subprocess
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from script_helpers import TINY_RQVAE, flags_to_argv, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INJECT_FAULTS = os.path.join(REPO, "tests", "inject_faults.py")
SCRIPT = os.path.join(REPO, "examples", "train_rqvae.py")

TINY_MODEL = TINY_RQVAE


def make_images(n: int, size: int = 16, seed: int = 0) -> list[PIL.Image.Image]:
    """Smooth grayscale blobs: easy to reconstruct, so a few steps lower the loss."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
        images.append(PIL.Image.fromarray((255 * blob).astype(np.uint8), mode="L"))
    return images


def save_dataset(path, images, labels=None, names=("a", "b")):
    features = {"image": datasets.Image()}
    data = {"image": images}
    if labels is not None:
        features["label"] = datasets.ClassLabel(names=list(names))
        data["label"] = labels
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    with open(root / "model.json", "w") as f:
        json.dump(TINY_MODEL, f)
    images = make_images(16)
    save_dataset(root / "images", images, labels=[i % 2 for i in range(16)])
    return root


def run_script(args, env_extra=None, torchrun=None, check=True, faults=()):
    """Run the script in a subprocess; `faults` are flags of tests/inject_faults.py, which then wraps it."""
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    env.update(env_extra or {})
    wrapped = [INJECT_FAULTS, *faults, SCRIPT, *args] if faults else [SCRIPT, *args]
    if torchrun:
        launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
        cmd = [launcher, "--nproc_per_node", str(torchrun), "--master_port", str(29500 + os.getpid() % 1000),
               *wrapped]
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        cmd = [sys.executable, *wrapped]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
        )
    return proc


def base_args(data_dir, output_dir, steps=8, **overrides):
    args = {
        "--dataset_name": str(data_dir / "images"),
        "--model_config_name_or_path": str(data_dir / "model.json"),
        "--resolution": "16",
        "--train_batch_size": "4",
        "--max_train_steps": str(steps),
        "--learning_rate": "2e-3",
        "--discr_learning_rate": "1e-3",
        "--disc_base_channels": "8",
        "--disc_num_layers": "2",
        "--checkpointing_steps": "3",
        "--checkpoints_total_limit": "1",
        "--validation_steps": "4",
        "--num_validation_images": "4",
        "--report_to": "none",
        "--output_dir": str(output_dir),
        "--seed": "0",
    }
    args.update(overrides)
    return flags_to_argv(args)


def step_losses(output_dir, key="rec_loss"):
    return {m["step"]: m[key] for m in read_metrics(output_dir) if key in m}


def model_state(output_dir):
    return load_file(os.path.join(output_dir, "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def full_run(data_dir):
    """An uninterrupted 8-step run (checkpoints at 3 and 6, at most one kept)."""
    out = data_dir / "full"
    run_script(base_args(data_dir, out))
    return out


def test_short_run_saves_loadable_model_and_loss_goes_down(full_run):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    model = RQVAEModel.from_pretrained(str(full_run))
    assert model.config.codebook_size == 32 and model.config.code_depth == 2
    losses = step_losses(full_run)
    assert sorted(losses) == list(range(1, 9))
    assert np.mean([losses[7], losses[8]]) < 0.7 * np.mean([losses[1], losses[2]]), losses
    metrics = read_metrics(full_run)
    for key in ("commitment_loss", "g_loss", "d_loss", "adaptive_weight", "lr", "codebook_usage/depth1",
                "perplexity/depth0"):
        assert key in metrics[0], key
    assert any("val/psnr" in m for m in metrics)
    assert os.path.isfile(full_run / "validation" / "step_000004.png")
    card = open(full_run / "README.md").read()
    assert "validation PSNR" in card and "## Training" in card and "RQVAEModel" in card
    # --checkpoints_total_limit 1: only the newest checkpoint stays
    assert sorted(p for p in os.listdir(full_run) if p.startswith("checkpoint")) == ["checkpoint-6"]
    with torch.no_grad():
        codes = model.encode(torch.zeros(1, 1, 16, 16)).codes
    assert codes.shape == (1, 8, 8, 2)
    # --model_config_name_or_path with a trained folder fine-tunes it: same weights, training mode
    finetune = load_train_module().load_model(str(full_run))
    assert finetune.training
    torch.testing.assert_close(finetune.quantizer.embed, model.quantizer.embed)


def test_sigkill_then_resume_latest_matches_uninterrupted_run(data_dir, full_run):
    out = data_dir / "killed"
    proc = run_script(base_args(data_dir, out), check=False, faults=["--sigkill_after_step", "5"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint")) == ["checkpoint-3"]
    assert not os.path.exists(out / "diffusion_pytorch_model.safetensors")

    run_script(base_args(data_dir, out, **{"--resume_from_checkpoint": "latest"}))
    metrics = read_metrics(out)
    steps = [m["step"] for m in metrics if "rec_loss" in m]
    # killed run logged 1..5, the resumed one continues at the step after checkpoint-3
    assert steps == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    resumed, reference = model_state(out), model_state(full_run)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    full_losses, resumed_losses = step_losses(full_run), step_losses(out)
    for step in range(4, 9):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_two_process_run_keeps_one_codebook_and_loss_goes_down(data_dir):
    out = data_dir / "ddp"
    run_script(base_args(data_dir, out, steps=8, **{"--train_batch_size": "2"}), torchrun=2,
               faults=["--dump_state_to", str(out / "debug")])
    rank0 = load_file(str(out / "debug" / "rank0.safetensors"))
    rank1 = load_file(str(out / "debug" / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # codebooks (EMA buffers) and weights: bit-identical on both processes
        assert torch.equal(rank0[key], rank1[key]), key
    assert torch.equal(rank0["quantizer.embed"], model_state(out)["quantizer.embed"])
    # the codebook moved away from its initialisation: the all-reduced EMA updates happened
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    init = RQVAEModel.from_config(TINY_MODEL)
    assert not torch.allclose(init.quantizer.embed, rank0["quantizer.embed"])
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 9))
    assert np.mean([losses[7], losses[8]]) < 0.8 * np.mean([losses[1], losses[2]]), losses


def test_nonfinite_loss_stops_with_message_and_keeps_last_checkpoint(data_dir):
    out = data_dir / "nan"
    proc = run_script(base_args(data_dir, out), check=False, faults=["--nan_at_step", "5"])
    assert proc.returncode == 1
    assert "non-finite loss at step 5" in proc.stderr
    assert "checkpoint-3" in proc.stderr
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint")) == ["checkpoint-3"]
    assert not os.path.exists(out / "diffusion_pytorch_model.safetensors")  # nothing saved after the NaN
    saved = load_file(str(out / "checkpoint-3" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert max(step_losses(out)) == 4


def test_corrupt_image_is_counted_and_skipped_bf16_keeps_quantizer_fp32(data_dir):
    path = data_dir / "with_corrupt"
    images = [{"bytes": image_bytes(im), "path": None} for im in make_images(7)]
    images.insert(2, {"bytes": b"this is not an image", "path": "broken.png"})
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})) \
        .save_to_disk(str(path))
    out = data_dir / "corrupt"
    proc = run_script(base_args(data_dir, out, steps=3, **{
        "--dataset_name": str(path), "--mixed_precision": "bf16", "--disc_weight": "0"}))
    assert "broken.png" in proc.stderr
    metrics = read_metrics(out)
    assert [m for m in metrics if "rec_loss" in m][-1]["num_skipped_images"] >= 1
    state = model_state(out)
    assert state["quantizer.embed"].dtype == torch.float32
    assert torch.isfinite(state["quantizer.embed"]).all()


def image_bytes(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_rqvae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_data_and_flags_give_clear_errors(data_dir, tmp_path):
    train = load_train_module()
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"image": [make_images(1)[0]]}, features=datasets.Features(
        {"image": datasets.Image()})).select([]).save_to_disk(str(empty))
    with pytest.raises(ValueError, match="empty"):
        train.main(base_args(data_dir, tmp_path / "o1", **{"--dataset_name": str(empty)}))
    with pytest.raises(ValueError, match="`image_column` 'pixels'.*available columns"):
        train.main(base_args(data_dir, tmp_path / "o2", **{"--image_column": "pixels"}))
    with pytest.raises(ValueError, match="--lpips_weights"):
        train.parse_args(base_args(data_dir, tmp_path / "o3", **{"--perceptual_weight": "1.0"}))
    with pytest.raises(ValueError, match="--resume_from_checkpoint"):
        missing = str(tmp_path / "nope")
        train.main(base_args(data_dir, tmp_path / "o4", **{"--resume_from_checkpoint": missing}))
    with pytest.raises(ValueError, match="--disc_num_layers"):
        train.main(base_args(data_dir, tmp_path / "o5", **{"--disc_num_layers": "3"}))
    with pytest.raises(ValueError, match="--report_to"):
        train.parse_args(base_args(data_dir, tmp_path / "o6", **{"--report_to": "mlflowx"}))


def test_help_lists_the_issue_flags_and_the_script_layer_imports_nothing_heavy():
    # Building the parser adds no heavy import beyond what `import rq_hf` itself costs (the package root
    # imports the models; everything under rq_hf.training is lazy).
    code = (
        "import sys, importlib.util, rq_hf; before = set(sys.modules);"
        f"spec = importlib.util.spec_from_file_location('t', {SCRIPT!r});"
        "m = importlib.util.module_from_spec(spec);"
        "spec.loader.exec_module(m); print(m.build_parser().format_help());"
        "new = {n.split('.')[0] for n in set(sys.modules) - before};"
        "print('HEAVY', sorted(new & {'torch', 'datasets', 'accelerate', 'diffusers', 'PIL'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "src")))
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    for flag in ("--dataset_name", "--train_data_dir", "--model_config_name_or_path", "--reconstruction_loss",
                 "--disc_start", "--disc_weight", "--discr_learning_rate", "--perceptual_weight",
                 "--lpips_weights", "--gradient_accumulation_steps", "--lr_scheduler", "--adam_beta2",
                 "--max_grad_norm", "--checkpoints_total_limit", "--resume_from_checkpoint",
                 "--validation_steps", "--report_to", "--push_to_hub", "--hub_model_id", "--hub_token",
                 "--mixed_precision", "--max_train_samples"):
        assert flag in proc.stdout, flag
