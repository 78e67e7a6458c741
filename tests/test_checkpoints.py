"""Training checkpoints: a new one is complete before old ones are rotated out, `latest` picks the newest
complete one (naming what it skipped), leftovers of killed saves are ignored and then cleaned up."""

import errno
import json
import logging
import os
import shutil
import signal
from unittest import mock

import pytest
import torch
from script_helpers import TINY_RQVAE, flags_to_argv, load_example, read_metrics, save_blob_dataset

from rq_hf.training.script_utils import (
    get_last_checkpoint,
    reset_accelerate_state,
    resolve_resume_checkpoint,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def tiny_accelerator():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return accelerator


def checkpoints(folder):
    return sorted(n for n in os.listdir(folder) if "checkpoint" in n)


def test_latest_picks_the_newest_complete_checkpoint_and_names_the_skipped(tmp_path, caplog):
    accelerator = tiny_accelerator()
    for step in (2, 4):
        save_checkpoint(accelerator, str(tmp_path), step)
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-8").mkdir()  # empty
    shutil.copytree(tmp_path / "checkpoint-4", tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-6" / "model.safetensors").unlink()  # partial
    (tmp_path / "checkpoint-12.tmp").mkdir()  # staging of an older version
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-8" in caplog.text and "checkpoint-6" in caplog.text and "model.safetensors" in caplog.text

    # a save killed while writing leaves a staging folder: ignored by `latest`, removed by the next save
    pid = os.fork()
    if pid == 0:
        try:
            from accelerate import Accelerator

            real = Accelerator.save_state

            def save_then_die(self, output_dir=None, **kwargs):
                real(self, output_dir, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)

            with mock.patch.object(Accelerator, "save_state", save_then_die):
                save_checkpoint(accelerator, str(tmp_path), 10, total_limit=1)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    staging = [n for n in os.listdir(tmp_path) if n.startswith(".checkpoint-10.saving-")]
    assert len(staging) == 1 and os.listdir(tmp_path / staging[0])
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")  # nothing lost, nothing rotated
    assert (tmp_path / "checkpoint-2").is_dir()

    save_checkpoint(accelerator, str(tmp_path), 14, total_limit=1)
    assert checkpoints(tmp_path) == ["checkpoint-14"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_failed_checkpoint_write_keeps_the_previous_checkpoint_and_resume_uses_it(tmp_path):
    from accelerate import Accelerator

    train = load_example("train_rqvae")
    with open(tmp_path / "model.json", "w") as f:
        json.dump(TINY_RQVAE, f)
    out = tmp_path / "out"
    argv = flags_to_argv({
        "--dataset_name": save_blob_dataset(tmp_path / "images", n=8),
        "--model_config_name_or_path": str(tmp_path / "model.json"),
        "--resolution": "16",
        "--train_batch_size": "4",
        "--max_train_steps": "4",
        "--checkpointing_steps": "2",
        "--checkpoints_total_limit": "1",
        "--disc_weight": "0",
        "--validation_steps": "100",
        "--num_validation_images": "2",
        "--report_to": "none",
        "--output_dir": str(out),
    })
    real, calls = Accelerator.save_state, []

    def disk_full_on_second_call(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kwargs)

    with mock.patch.object(Accelerator, "save_state", disk_full_on_second_call):
        with pytest.raises(OSError, match="No space left"):
            train.main(argv)
    assert checkpoints(out) == ["checkpoint-2"]  # the old one kept, no half-written one
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    reset_accelerate_state()
    train.main(argv + ["--resume_from_checkpoint", "latest"])
    assert [m["step"] for m in read_metrics(out) if "rec_loss" in m] == [1, 2, 3, 4, 3, 4]
    assert checkpoints(out) == ["checkpoint-4"]
