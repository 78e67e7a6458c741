"""RQTransformerPipeline with a text-conditional transformer: prompts, tokenizer component, guidance, loaders."""

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from script_helpers import assert_pipeline_loads_without_rq_hf
from tiny_models import tiny_caption_tokenizer, tiny_text_transformer, tiny_transformer, tiny_vae

from rq_hf import RQTransformerPipeline
from rq_hf.models.tokenization_rq_transformer import tokenize_captions, train_caption_tokenizer

PROMPTS = ["a red circle on the left", "a blue square on the right"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_caption_tokenizer()


@pytest.fixture(scope="module")
def pipe(tokenizer):
    transformer = tiny_text_transformer(text_vocab_size=len(tokenizer))
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=transformer, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- tokenizer


def test_caption_tokenizer_lowercases_pads_and_truncates(tokenizer, caplog):
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1 and tokenizer.model_max_length == 6
    ids = tokenize_captions(tokenizer, ["A RED Circle", "a red circle"], 6)
    assert ids.dtype == torch.long and ids.shape == (2, 6) and torch.equal(ids[0], ids[1])
    assert (ids[0] == 0).any() and (ids[0] != 0).any()  # padded tail after real tokens
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "a red circle"
    assert torch.equal(tokenize_captions(tokenizer, "", 6), torch.zeros(1, 6, dtype=torch.long))
    with caplog.at_level(logging.WARNING):
        long = tokenize_captions(tokenizer, "a red circle on the left and a green square on the right", 6)
    assert long.shape == (1, 6) and (long != 0).all() and "truncated" in caplog.text
    with pytest.raises(ValueError, match="vocab_size"):
        train_caption_tokenizer(["a"], vocab_size=2, max_text_length=4)


# ---------------------------------------------------------------- prompts


def test_prompts_batched_with_num_images_per_prompt_and_guidance(pipe):
    out = pipe(prompt=PROMPTS, num_images_per_prompt=2, guidance_scale=3.0, generator=gen(0), output_type="latent")
    codes = out.images
    assert codes.shape == (4, 4, 4, 2)
    # the same codes as the model sampling the repeated caption ids with the empty caption as the
    # unconditional branch, without a key-value cache
    text_ids = pipe.tokenize_prompt(PROMPTS).repeat_interleave(2, dim=0)
    reference = pipe.transformer.generate_codes(
        text_ids=text_ids, guidance_scale=3.0, generator=gen(0), use_cache=False
    )
    assert torch.equal(codes, reference)
    # batching does not change a sample: per-image generators reproduce the second prompt alone
    both = pipe(prompt=PROMPTS, num_images_per_prompt=2, guidance_scale=3.0, output_type="latent",
                generator=[gen(i) for i in range(4)]).images
    second = pipe(prompt=PROMPTS[1], num_images_per_prompt=2, guidance_scale=3.0, output_type="latent",
                  generator=[gen(2), gen(3)]).images
    assert torch.equal(both[2:], second)
    unguided = pipe(prompt=PROMPTS, num_images_per_prompt=2, generator=gen(0), output_type="latent").images
    assert not torch.equal(unguided, codes)


def test_negative_prompt_is_the_unconditional_branch(pipe):
    def run(guidance_scale=3.0, **kwargs):  # greedy: the untrained model's distributions are nearly flat
        kwargs.update(prompt=PROMPTS, guidance_scale=guidance_scale, top_k=1, output_type="latent")
        return pipe(**kwargs).images

    negative = run(negative_prompt="a green circle")
    reference = pipe.transformer.generate_codes(
        text_ids=pipe.tokenize_prompt(PROMPTS), negative_text_ids=pipe.tokenize_prompt(["a green circle"] * 2),
        guidance_scale=3.0, top_k=1,
    )
    assert torch.equal(negative, reference)
    assert not torch.equal(negative, run())
    assert torch.equal(run(negative_prompt=[""] * 2), run())  # the empty prompt is the default branch
    assert torch.equal(run(1.0, negative_prompt="a green circle"), run(1.0))  # ignored without guidance


def test_output_types_and_completion_from_an_image(pipe):
    images = pipe(prompt=PROMPTS[0], generator=gen(2)).images
    assert len(images) == 1 and isinstance(images[0], PIL.Image.Image) and images[0].size == (8, 8)
    arr = pipe(prompt=PROMPTS, generator=gen(2), output_type="np").images
    assert arr.shape == (2, 8, 8, 3)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    reference = pipe.vqvae.encode(pipe.image_processor.preprocess(image, height=8, width=8)).codes.reshape(1, 16, 2)
    codes = pipe(prompt=PROMPTS, image=image, num_prefix_positions=5, generator=gen(0), output_type="latent").images
    assert torch.equal(codes.reshape(2, 16, 2)[:, :5], reference.expand(2, -1, -1)[:, :5])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "`prompt` is required"),
        (dict(class_labels=[0]), ValueError, "prompt="),
        (dict(prompt=PROMPTS, num_images=3), ValueError, "num_images"),
        (dict(prompt=PROMPTS, num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(prompt=PROMPTS, negative_prompt=["a", "b", "c"], guidance_scale=2.0), ValueError, "negative_prompt"),
        (dict(prompt=[1, 2]), TypeError, "prompt"),
        (dict(prompt=[]), TypeError, "prompt"),
        (dict(prompt=PROMPTS, num_images_per_prompt=2, generator=[gen(0)] * 2), ValueError, "generator"),
    ],
)
def test_bad_prompt_input(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_class_and_unconditional_pipelines_refuse_prompts():
    class_pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    with pytest.raises(ValueError, match="`prompt` is only for text-conditional.*class_labels"):
        class_pipe(prompt="a red circle")
    with pytest.raises(ValueError, match="negative_prompt"):
        class_pipe(class_labels=[0], negative_prompt="x", guidance_scale=2.0)
    assert class_pipe(class_labels=[0, 2], num_images_per_prompt=3, output_type="latent").images.shape[0] == 6
    uncond = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(num_classes=None))
    with pytest.raises(ValueError, match="unconditional: pass `num_images`"):
        uncond(prompt="a red circle")
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        uncond(num_images_per_prompt=2)


def test_tokenizer_must_fit_the_transformer(tokenizer):
    text = tiny_text_transformer(text_vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="`tokenizer` is required"):
        RQTransformerPipeline(vqvae=tiny_vae(), transformer=text)
    with pytest.raises(ValueError, match="`tokenizer` must be None"):
        RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="at most text_vocab_size"):
        RQTransformerPipeline(
            vqvae=tiny_vae(), transformer=tiny_text_transformer(text_vocab_size=8), tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="text_pad_token_id=3"):
        RQTransformerPipeline(
            vqvae=tiny_vae(), transformer=tiny_text_transformer(text_vocab_size=64, text_pad_token_id=3),
            tokenizer=tokenizer,
        )


# ---------------------------------------------------------------- saving and loading


def test_tokenizer_saved_and_reloaded_with_both_loaders(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert (path / "tokenizer" / "tokenizer.json").is_file()
    card = (path / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "prompt=[" in card and "caption dropout (p = 0.1)" in card
    expected = pipe(prompt=PROMPTS, guidance_scale=2.0, generator=gen(7), output_type="np").images

    loaded = RQTransformerPipeline.from_pretrained(path)
    assert type(loaded) is RQTransformerPipeline
    assert loaded.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    np.testing.assert_array_equal(
        loaded(prompt=PROMPTS, guidance_scale=2.0, generator=gen(7), output_type="np").images, expected
    )
    generic = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    assert torch.equal(generic.tokenize_prompt(PROMPTS), pipe.tokenize_prompt(PROMPTS))
    np.testing.assert_array_equal(
        generic(prompt=PROMPTS, guidance_scale=2.0, generator=gen(7), output_type="np").images, expected
    )
    call = f"prompt={PROMPTS!r}, guidance_scale=2.0, generator=torch.Generator().manual_seed(7), output_type='np'"
    assert_pipeline_loads_without_rq_hf(path, call, expected, tmp_path)


def test_class_pipeline_folders_without_a_tokenizer_entry_still_load(tmp_path):
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["tokenizer"] == [None, None]
    del index["tokenizer"]  # as saved before the tokenizer component existed
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    expected = pipe(class_labels=[1], generator=gen(3), output_type="latent").images
    for loaded in (RQTransformerPipeline.from_pretrained(tmp_path),
                   DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)):
        assert loaded.tokenizer is None
        assert torch.equal(loaded(class_labels=[1], generator=gen(3), output_type="latent").images, expected)


def test_the_app_samples_a_text_pipeline_from_its_prompt_box(pipe):
    """examples/app.py (issue 15) drives a real text pipeline: the prompt reaches `pipe(prompt=...)`."""
    import os
    import runpy

    app = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "examples", "app.py"))
    assert app["condition_kind"](pipe) == "text"
    codes = app["sample_codes"](pipe, num_images=2, seed=3, prompt=PROMPTS[0], guidance_scale=2.0)
    expected = pipe(prompt=[PROMPTS[0]] * 2, guidance_scale=2.0, output_type="latent",
                    generator=[gen(3), gen(4)]).images
    assert torch.equal(codes, expected)
