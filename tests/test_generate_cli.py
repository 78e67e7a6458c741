"""examples/generate.py on a tiny pipeline saved by the test."""

import os
import runpy

import PIL.Image
import pytest
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerPipeline

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "examples", "generate.py")


@pytest.fixture(scope="module")
def generate_main():
    return runpy.run_path(SCRIPT)["main"]


def test_class_conditional_names_and_ids(tmp_path, generate_main):
    names = {0: "cat", 1: "dog", 2: "owl"}
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(), id2label=names)
    pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    paths = generate_main(["--model_path", str(tmp_path / "pipe"), "--class_labels", "dog", "2", "--num_per_class", "3",
                           "--top_k", "8,4", "--guidance_scale", "2", "--output_dir", str(out)])
    assert len(paths) == 7 and paths[-1].endswith("grid.png")
    assert os.path.basename(paths[0]) == "000_dog.png" and os.path.basename(paths[5]) == "005_2.png"
    grid = PIL.Image.open(paths[-1])
    assert grid.size == (3 * 8, 2 * 8)
    # image i uses seed + i whatever else is in the batch
    again = generate_main(["--model_path", str(tmp_path / "pipe"), "--class_labels", "dog", "--top_k", "8,4",
                           "--guidance_scale", "2", "--output_dir", str(tmp_path / "b")])
    assert PIL.Image.open(again[0]).tobytes() == PIL.Image.open(paths[0]).tobytes()


def test_unconditional_and_errors(tmp_path, generate_main):
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(num_classes=None))
    pipe.save_pretrained(tmp_path / "u")
    out = str(tmp_path / "o")
    paths = generate_main(["--model_path", str(tmp_path / "u"), "--num_images", "2", "--output_dir", out])
    assert len(paths) == 3 and PIL.Image.open(paths[-1]).size == (16, 8)
    with pytest.raises(ValueError, match="class_labels"):
        generate_main(["--model_path", str(tmp_path / "u"), "--class_labels", "1", "--output_dir", out])


def test_text_to_image_prompts(tmp_path, generate_main):
    from tiny_models import tiny_caption_tokenizer, tiny_text_transformer

    tokenizer = tiny_caption_tokenizer()
    pipe = RQTransformerPipeline(
        vqvae=tiny_vae(), transformer=tiny_text_transformer(text_vocab_size=len(tokenizer)), tokenizer=tokenizer
    )
    pipe.save_pretrained(tmp_path / "t")
    out = str(tmp_path / "o")
    paths = generate_main(["--model_path", str(tmp_path / "t"), "--prompt", "a red circle on the left", "a blue square",
                           "--num_per_class", "2", "--guidance_scale", "3", "--negative_prompt", "a green circle",
                           "--output_dir", out])
    assert len(paths) == 5 and os.path.basename(paths[2]) == "002_a-blue-square.png"
    assert PIL.Image.open(paths[-1]).size == (2 * 8, 2 * 8)
    with pytest.raises(SystemExit, match="is text-conditional; give --prompt"):
        generate_main(["--model_path", str(tmp_path / "t"), "--output_dir", out])
    class_pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer())
    class_pipe.save_pretrained(tmp_path / "c")
    with pytest.raises(SystemExit, match="not text-conditional"):
        generate_main(["--model_path", str(tmp_path / "c"), "--prompt", "a cat", "--output_dir", out])
