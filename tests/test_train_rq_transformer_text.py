"""examples/train_rq_transformer.py with --caption_column: text-conditional training on an image folder with
captions (metadata.jsonl) and on a codes dataset from extract_codes.py that carries them (seconds per run)."""

import importlib.util
import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from script_helpers import read_metrics
from test_train_rq_transformer import TINY_VAE, base_args, make_images

from rq_hf.training.script_utils import reset_accelerate_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_example("train_rq_transformer")
WORDS = {0: ("left", "west side"), 1: ("right", "east side")}


def caption(label: int, i: int) -> str:
    return f"A bright spot on the {WORDS[label][i % 2]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    root = tmp_path_factory.mktemp("text-data")
    torch.manual_seed(0)
    RQVAEModel(**TINY_VAE).save_pretrained(str(root / "vae"))
    folder = root / "images"
    folder.mkdir()
    images, labels = make_images(32)
    with open(folder / "metadata.jsonl", "w") as f:
        for i, (image, label) in enumerate(zip(images, labels)):
            image.save(folder / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": caption(label, i // 2)}) + "\n")
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate_state()


def text_args(data_dir, output_dir, **overrides):
    """The class-conditional tests' flags, on the captioned image folder with --caption_column."""
    text = {
        "--dataset_name": None,
        "--class_label_column": None,
        "--train_data_dir": str(data_dir / "images"),
        "--caption_column": "text",
        "--max_text_length": "8",
        "--text_vocab_size": "64",
        "--caption_dropout_prob": "0.2",
    }
    return base_args(data_dir, output_dir, **{**text, **overrides})


@pytest.fixture(scope="module")
def text_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-run")
    argv = text_args(data_dir, out, **{
        "--bpe_dropout": "0.1",
        "--validation_prompts": None,
    }) + ["--validation_prompts", "a bright spot on the left", "a bright spot on the right"]
    train.main(argv)
    reset_accelerate_state()
    return out


def test_caption_run_trains_a_tokenizer_and_saves_a_text_pipeline(text_run):
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(str(text_run))
    config = pipe.transformer.config
    assert config.condition_type == "text" and config.max_text_length == 8
    assert config.caption_dropout_prob == 0.2 and config.text_vocab_size == len(pipe.tokenizer) <= 64
    assert pipe.tokenizer.pad_token_id == config.text_pad_token_id == 0
    # the tokenizer was trained on the captions: their words are single tokens, lowercased
    ids = pipe.tokenize_prompt(["A Bright Spot on the WEST side"])[0].tolist()
    assert ids[:7] == pipe.tokenize_prompt(["a bright spot on the west side"])[0].tolist()[:7]
    assert 1 not in ids and ids.count(0) == 1  # no [UNK]; 7 word tokens, then one [PAD]
    images = pipe(prompt="a bright spot on the left", num_images_per_prompt=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()

    records = read_metrics(str(text_run))
    steps = [r for r in records if "text_loss" in r]
    assert len(steps) == 12 and all(r["image_loss"] > 0 and r["text_loss"] > 0 for r in steps)
    for r in steps:  # the logged loss is the weighted sum (config weights 0.1 and 0.9)
        assert r["loss"] == pytest.approx(0.1 * r["text_loss"] + 0.9 * r["image_loss"], rel=1e-4)
    assert steps[-1]["text_loss"] < steps[0]["text_loss"]
    assert any("val/bits_per_code" in r for r in records)
    grid = PIL.Image.open(text_run / "validation" / "step_000012.png")
    assert grid.size == (2 * 16, 2 * 16)  # one row per validation prompt, --num_validation_images columns
    card = (text_run / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "caption_column" in card


def test_codes_dataset_with_captions_and_a_given_tokenizer(data_dir, text_run, tmp_path):
    extract = load_example("extract_codes")
    codes_dir = tmp_path / "codes"
    extract.main(["--vqvae_model_name_or_path", str(data_dir / "vae"), "--train_data_dir", str(data_dir / "images"),
                  "--resolution", "16", "--output_dir", str(codes_dir), "--device", "cpu"])
    codes = datasets.load_from_disk(str(codes_dir))
    assert codes.features["text"] == datasets.Value("string") and "A bright spot" in codes[0]["text"]

    out = tmp_path / "run"
    argv = text_args(data_dir, out, **{"--train_data_dir": None, "--codes_dataset": str(codes_dir),
                                       "--tokenizer_name_or_path": str(text_run), "--max_train_steps": "4",
                                       "--text_vocab_size": None, "--mixed_precision": "bf16"})
    train.main(argv)
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(str(out))
    reference = RQTransformerPipeline.from_pretrained(str(text_run)).tokenizer
    assert pipe.tokenizer.get_vocab() == reference.get_vocab()
    assert all("text_loss" in r for r in read_metrics(str(out)) if "loss" in r)
    grid = PIL.Image.open(out / "validation" / "step_000004.png")  # default prompts: distinct held-out captions
    assert grid.size[0] == 2 * 16 and grid.size[1] % 16 == 0 and grid.size[1] >= 2 * 16


def test_text_flags_need_a_caption_column_and_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="--caption_dropout_prob.*--caption_column"):
        train.parse_args(text_args(data_dir, tmp_path, **{"--caption_column": None}))
    with pytest.raises(ValueError, match="--caption_column.*--label_column"):
        train.parse_args(text_args(data_dir, tmp_path, **{"--class_label_column": "label"}))
    with pytest.raises(ValueError, match="--bpe_dropout"):
        train.parse_args(text_args(data_dir, tmp_path, **{"--bpe_dropout": "1.5"}))
    with pytest.raises(ValueError, match="caption_column.*'caption'.*available columns"):
        train.main(text_args(data_dir, tmp_path / "a", **{"--caption_column": "caption"}))
    reset_accelerate_state()
    with pytest.raises(ValueError, match="caption_column.*must hold strings"):
        train.main(text_args(data_dir, tmp_path / "b", **{"--caption_column": "image"}))
