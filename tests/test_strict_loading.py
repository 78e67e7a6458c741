"""Strict loading: a config that does not match its weights is an error naming them (`strict=False` to load a
changed architecture on purpose); wrong or missing folders get messages that say what is wrong."""

import json

import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel


def edit_config(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def pipe_dir(tmp_path):
    path = tmp_path / "pipe"
    RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer()).save_pretrained(path)
    return path


@pytest.mark.parametrize("field, value, names", [
    ("num_spatial_layers", 3, "spatial_transformer.layers.1."),
    ("num_depth_layers", 2, "depth_transformer.layers.1."),
])
def test_pipeline_with_more_layers_than_its_weights_raises(pipe_dir, field, value, names):
    edit_config(pipe_dir / "transformer" / "config.json", **{field: value})
    with pytest.raises(ValueError, match=f"missing from the weights: .*{names}.*strict=False"):
        RQTransformerPipeline.from_pretrained(pipe_dir)
    loaded = RQTransformerPipeline.from_pretrained(pipe_dir, strict=False)  # a changed architecture, on purpose
    assert getattr(loaded.transformer.config, field) == value
    codes = loaded.transformer.generate_codes(class_labels=[0], generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 4, 4, 2)


@pytest.mark.parametrize("changes, match", [
    ({"layers_per_block": 2}, r"missing from the weights: .*resnets\.2\..*32 in all"),
    ({"mid_block_add_attention": False}, r"in the weights but not in the model: .*mid_block\.attentions"),
])
def test_rqvae_config_that_does_not_match_the_weights_raises(tmp_path, changes, match):
    tiny_vae().save_pretrained(tmp_path / "vae")
    edit_config(tmp_path / "vae" / "config.json", **changes)
    with pytest.raises(ValueError, match=match):
        RQVAEModel.from_pretrained(tmp_path / "vae")
    vae = RQVAEModel.from_pretrained(tmp_path / "vae", strict=False)
    assert not any(t.is_meta for t in list(vae.parameters()) + list(vae.buffers()))
    assert vae.encode(torch.zeros(1, 3, 8, 8)).codes.shape == (1, 4, 4, 2)


def test_transformer_strict_loading_and_output_loading_info(tmp_path):
    tiny_transformer().save_pretrained(tmp_path / "t")
    model, info = RQTransformerForCausalImageModeling.from_pretrained(tmp_path / "t", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    edit_config(tmp_path / "t" / "config.json", num_spatial_layers=2)
    with pytest.raises(ValueError, match=r"spatial_transformer\.layers\.1\.attn"):
        RQTransformerForCausalImageModeling.from_pretrained(tmp_path / "t")


def test_missing_or_wrong_folders_say_what_is_wrong(pipe_dir, tmp_path, monkeypatch):
    missing = str(tmp_path / "no" / "such" / "model")
    for load in (RQTransformerForCausalImageModeling.from_pretrained, RQTransformerPipeline.from_pretrained,
                 RQVAEModel.from_pretrained):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            load(missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):  # a relative path, also a valid repo id
        RQTransformerPipeline.from_pretrained("pipe/transformr")
    with pytest.raises(ValueError, match="RQVAEModel.*not a rq_transformer.*RQVAEModel.from_pretrained"):
        RQTransformerForCausalImageModeling.from_pretrained(pipe_dir / "vqvae")
    with pytest.raises(ValueError, match="no config.json.*RQTransformerPipeline.*pipeline folder.*subfolder"):
        RQVAEModel.from_pretrained(pipe_dir)
    with pytest.raises(ValueError, match="no model_index.json.*RQVAEModel"):
        RQTransformerPipeline.from_pretrained(pipe_dir / "vqvae")
    (pipe_dir / "model_index.json").write_text('{"vqvae": ["autoencoder_rqvae", "RQVAEModel"],')
    with pytest.raises(ValueError, match=r"model_index\.json.*not valid JSON"):
        RQTransformerPipeline.from_pretrained(pipe_dir)
