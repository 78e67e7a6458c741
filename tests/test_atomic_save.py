"""All-or-nothing saves (rq_hf.models.atomic_save): re-saves replace the weight files as a set, a failed
pipeline save leaves the old folder, leftovers of killed saves are cleaned up, folders get the umask's mode."""

import os
import signal
import stat
from unittest import mock

import pytest
import torch
from official_fixtures import write_official_release
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerPipeline
from rq_hf.conversion.convert_original import convert_checkpoint_dir


def snapshot(folder):
    """Relative path -> bytes of every file under `folder` (hidden ones included)."""
    return {os.path.relpath(os.path.join(root, f), folder): open(os.path.join(root, f), "rb").read()
            for root, _, files in os.walk(folder) for f in files}


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return model


def assert_same_weights(loaded, reference):
    expected = reference.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("make", [tiny_vae, tiny_transformer])
@pytest.mark.parametrize("first_sharded", [True, False])
def test_resave_with_other_sharding_loads_the_new_weights(make, first_sharded, tmp_path):
    path = tmp_path / "model"
    old, new = make(), perturbed(make())
    small = {"max_shard_size": "20KB"}
    old.save_pretrained(path, **(small if first_sharded else {}))
    (path / "checkpoint-3").mkdir()  # not a model file: stays
    (path / "notes.txt").write_text("mine")
    new.save_pretrained(path, **({} if first_sharded else small))
    assert_same_weights(type(new).from_pretrained(path), new)
    assert (path / "checkpoint-3").is_dir() and (path / "notes.txt").read_text() == "mine"
    names = set(os.listdir(path))
    assert not any(n.startswith(".") for n in names), names
    sharded = any("-of-" in n for n in names)
    assert sharded == (not first_sharded), names  # only the new save's weight files are left


def test_pipeline_save_is_all_or_nothing_when_a_component_cannot_be_replaced(tmp_path):
    path = tmp_path / "pipe"
    old = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    old.save_pretrained(path)
    (path / "checkpoint-4").mkdir()
    before = snapshot(path)
    new = RQTransformerPipeline(vqvae=perturbed(tiny_vae()),
                                transformer=perturbed(tiny_transformer()))

    def refusing(move):  # moving vqvae/ away fails, as for a read-only vqvae/ and a non-root user
        def checked(src, dst, *args, **kwargs):
            if os.fspath(src) == str(path / "vqvae"):
                raise PermissionError(13, "Permission denied", os.fspath(src))
            return move(src, dst, *args, **kwargs)

        return checked

    with mock.patch("os.rename", refusing(os.rename)), mock.patch("os.replace", refusing(os.replace)):
        with pytest.raises(PermissionError):
            new.save_pretrained(path)
    assert snapshot(path) == before  # the old pipeline, untouched: no new transformer/, no hidden folders
    assert sorted(os.listdir(tmp_path)) == ["pipe"]
    loaded = RQTransformerPipeline.from_pretrained(path)
    assert_same_weights(loaded.transformer, old.transformer)
    assert_same_weights(loaded.vqvae, old.vqvae)


def test_killed_save_leaves_a_staging_folder_that_the_next_save_removes(tmp_path):
    path = tmp_path / "model"
    model = tiny_vae()
    model.save_pretrained(path)
    pid = os.fork()
    if pid == 0:  # child: killed while writing the model card, after the weights
        try:
            with mock.patch.object(type(model), "model_card", side_effect=lambda *a, **k: os.kill(os.getpid(),
                                                                                                  signal.SIGKILL)):
                perturbed(model).save_pretrained(path)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n != "model"]
    assert len(leftovers) == 1 and ".saving-" in leftovers[0]  # a full weight copy, hidden
    assert_same_weights(type(model).from_pretrained(path), tiny_vae())  # the old model
    tiny_vae().save_pretrained(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_saved_and_converted_folders_get_the_umask_mode(tmp_path):
    expected = 0o777 & ~umask()
    tiny_vae().save_pretrained(tmp_path / "vae")
    assert stat.S_IMODE(os.stat(tmp_path / "vae").st_mode) == expected
    write_official_release(str(tmp_path / "release"), stage2_kind=None)
    convert_checkpoint_dir(str(tmp_path / "release"), str(tmp_path / "converted"))
    assert stat.S_IMODE(os.stat(tmp_path / "converted").st_mode) == expected
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []
