"""Model cards, atomic saves and Hub uploads of the two models (the pipeline's are in test_pipeline.py)."""

import os
from unittest import mock

import pytest
import torch
from tiny_models import tiny_transformer as make_transformer
from tiny_models import tiny_vae


def tiny_transformer():
    return make_transformer(num_classes=2, vocab_size=16, id2label={0: "cat", 1: "dog"})


class FakeApi:
    uploads = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False):
        return mock.Mock(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        walk = os.walk(folder_path)
        files = sorted(os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in walk for f in fs)
        card = open(os.path.join(folder_path, "README.md")).read()
        FakeApi.uploads.append((repo_id, files, card))
        return "commit-url"


@pytest.mark.parametrize(
    "make, weights, snippet, library",
    [
        (tiny_vae, "diffusion_pytorch_model.safetensors", 'RQVAEModel.from_pretrained("me/vae")', "diffusers"),
        (tiny_transformer, "model.safetensors", 'from_pretrained("me/vae")', "transformers"),
    ],
)
def test_push_to_hub_uploads_folder_with_card(make, weights, snippet, library):
    model = make()
    FakeApi.uploads.clear()
    with mock.patch("rq_hf.models.hub_utils.HfApi", FakeApi):
        assert model.push_to_hub("me/vae", metrics={"PSNR (dB)": 30.1}) == "commit-url"
    (repo_id, files, card) = FakeApi.uploads[0]
    assert repo_id == "me/vae"
    assert weights in files and "config.json" in files and "README.md" in files
    for text in ("pipeline_tag: unconditional-image-generation", f"library_name: {library}", "- rq-vae",
                 "- rq-transformer", snippet, "PSNR (dB)", "30.1"):
        assert text in card, text


def test_transformer_card_lists_class_names(tmp_path):
    tiny_transformer().save_pretrained(tmp_path / "t")
    card = (tmp_path / "t" / "README.md").read_text()
    assert "0: cat, 1: dog" in card and '"vocab_size": 16' in card


@pytest.mark.parametrize("make", [tiny_vae, tiny_transformer])
def test_interrupted_save_keeps_earlier_folder(make, tmp_path):
    model = make()
    path = tmp_path / "model"
    model.save_pretrained(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with mock.patch.object(type(model), "model_card", side_effect=RuntimeError("disk full")):
        with pytest.raises(RuntimeError, match="disk full"):
            model.save_pretrained(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    loaded = type(model).from_pretrained(path)
    assert not torch.equal(next(loaded.parameters()), next(model.parameters()))
