"""rq_hf.training.script_utils and the seeded augmentations, in process (no training run)."""

import argparse
import fnmatch
import logging
import os
from unittest import mock

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from rq_hf.data import ROW_INDEX_COLUMN, ImageTransform, collate_images, with_image_transform
from rq_hf.training.script_utils import (
    CHECKPOINT_MANIFEST,
    NonFiniteLossError,
    add_bookkeeping_args,
    add_data_args,
    add_optimization_args,
    check_common_args,
    compute_schedule,
    get_last_checkpoint,
    guard_finite,
    load_train_dataset,
    resolve_report_to,
    resolve_resume_checkpoint,
    save_and_push,
)


def parser():
    p = argparse.ArgumentParser()
    add_data_args(p)
    add_optimization_args(p, learning_rate=3e-4, adam_beta2=0.95, lr_scheduler="cosine")
    add_bookkeeping_args(p, output_dir="out")
    return p


def test_shared_parser_defaults_and_validation():
    args = parser().parse_args(["--dataset_name", "x"])
    assert (args.learning_rate, args.adam_beta2, args.lr_scheduler) == (3e-4, 0.95, "cosine")
    check_common_args(args)
    with pytest.raises(ValueError, match="--train_batch_size"):
        check_common_args(parser().parse_args(["--dataset_name", "x", "--train_batch_size", "0"]))
    with pytest.raises(ValueError, match="--dataset_name"):
        check_common_args(parser().parse_args([]))
    with pytest.raises(ValueError, match="only one"):
        check_common_args(parser().parse_args(["--dataset_name", "x", "--train_data_dir", "y"]))


def test_report_to_skips_missing_trackers_with_a_message(caplog):
    assert resolve_report_to("none") == []
    with caplog.at_level(logging.WARNING):
        available = resolve_report_to("tensorboard,wandb")
    for name in ("tensorboard", "wandb"):
        try:
            __import__(name)
        except ImportError:
            assert name not in available
            assert f"pip install {name}" in caplog.text
    with pytest.raises(ValueError, match="--report_to"):
        resolve_report_to("comet")


def test_schedule_from_sharded_length():
    args = argparse.Namespace(gradient_accumulation_steps=2, max_train_steps=None, num_train_epochs=3)
    s = compute_schedule(5, args)
    assert (s.num_update_steps_per_epoch, s.max_train_steps, s.num_train_epochs) == (3, 9, 3)
    args.max_train_steps = 10
    assert compute_schedule(5, args).num_train_epochs == 4
    with pytest.raises(ValueError, match="batches per process"):
        compute_schedule(0, args)


def make_checkpoint(path):
    """A folder that counts as a complete checkpoint: a manifest listing no files."""
    os.makedirs(path)
    with open(os.path.join(path, CHECKPOINT_MANIFEST), "w") as f:
        f.write('{"step": 0, "files": {}}')


def test_checkpoint_discovery_ignores_partial_saves(tmp_path):
    assert get_last_checkpoint(str(tmp_path)) is None
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-12.tmp", "checkpoint-x"):
        make_checkpoint(tmp_path / name)
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume_checkpoint("latest", str(tmp_path / "empty")) is None
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="--resume_from_checkpoint"):
        resolve_resume_checkpoint(str(tmp_path / "missing"), str(tmp_path))


def test_fashion_mnist_pads_at_parse_time_and_loading_leaves_args_alone():
    args = parser().parse_args(["--dataset_name", "fashion_mnist", "--max_train_samples", "3"])
    check_common_args(args)
    assert args.pad_to_resolution  # 28x28 images are padded, never resized
    args.pad_to_resolution = False
    before = dict(vars(args))
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        assert len(load_train_dataset(args, split="test")) == 3
    assert vars(args) == before


def test_guard_finite_names_step_and_checkpoint(tmp_path):
    guard_finite({"loss": 1.0, "nonfinite": 0.0}, 3, str(tmp_path))
    make_checkpoint(tmp_path / "checkpoint-4")
    with pytest.raises(NonFiniteLossError, match=r"step 7.*checkpoint-4"):
        guard_finite({"loss": float("nan"), "nonfinite": 1.0}, 7, str(tmp_path))


class RecordingApi:
    """Stands for `huggingface_hub.HfApi`: records each upload (files and card) instead of sending it."""

    uploads = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        return mock.Mock(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        walk = os.walk(folder_path)
        files = sorted(os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in walk for f in fs)
        kept = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in ignore_patterns)]  # as HfApi matches
        card = open(os.path.join(folder_path, "README.md")).read()
        RecordingApi.uploads.append({"repo_id": repo_id, "folder": folder_path, "files": kept, "card": card,
                                     "token": self.token, **kwargs})
        return "commit-url"


def test_save_and_push_uploads_the_card_of_output_dir(tmp_path, monkeypatch):
    from tiny_models import tiny_vae

    monkeypatch.setattr(RecordingApi, "uploads", [])
    monkeypatch.setattr("rq_hf.models.hub_utils.HfApi", RecordingApi)
    output_dir = tmp_path / "my-rqvae"
    (output_dir / "checkpoint-2").mkdir(parents=True)
    (output_dir / "checkpoint-2" / "state.bin").write_bytes(b"x")
    args = argparse.Namespace(output_dir=str(output_dir), push_to_hub=True, hub_model_id=None, hub_token="secret",
                              hub_private=True, learning_rate=1e-3)
    repo_id = save_and_push(tiny_vae(), args, metrics={"PSNR (dB)": 20.5}, description="Trained for 2 steps.")

    assert repo_id == "my-rqvae"
    (upload,) = RecordingApi.uploads
    card = (output_dir / "README.md").read_text()
    assert upload["folder"] == str(output_dir) and upload["card"] == card  # the card the user sees
    for text in ("## Training", "Trained for 2 steps.", "learning_rate", "PSNR (dB)", 'from_pretrained("my-rqvae")'):
        assert text in card, text
    assert "secret" not in card and upload["token"] == "secret"
    assert "README.md" in upload["files"] and "diffusion_pytorch_model.safetensors" in upload["files"]
    assert not any(f.startswith("checkpoint-") for f in upload["files"])

    args.push_to_hub = False
    assert save_and_push(tiny_vae(), args, metrics={}, description="Again.") is None
    assert len(RecordingApi.uploads) == 1 and "Again." in (output_dir / "README.md").read_text()


def test_seeded_augmentations_depend_on_seed_epoch_and_row_only():
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L") for _ in range(6)]
    features = datasets.Features({"image": datasets.Image()})
    dataset = datasets.Dataset.from_dict({"image": images}, features=features)
    transform = ImageTransform(8, random_flip=True, num_channels=1)
    seeded = with_image_transform(dataset, transform, seed=5)
    assert ROW_INDEX_COLUMN in seeded.column_names
    batch_transform = seeded.format["format_kwargs"]["transform"]
    before = torch.get_rng_state()
    epoch0 = collate_images([seeded[i] for i in range(6)])["pixel_values"]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    # the same row gives the same crop/flip whatever order or batch it is loaded in
    again = collate_images([seeded[i] for i in (5, 3, 1)])["pixel_values"]
    assert torch.equal(again, epoch0[[5, 3, 1]])
    batch_transform.set_epoch(1)
    epoch1 = collate_images([seeded[i] for i in range(6)])["pixel_values"]
    assert not torch.equal(epoch0, epoch1)
    other = with_image_transform(dataset, transform, seed=6)
    assert not torch.equal(collate_images([other[i] for i in range(6)])["pixel_values"], epoch0)
