"""examples/text_to_image_shapes.py: the captioned shapes, the attribute checks, and --quick end to end."""

import importlib.util
import json
import os

import numpy as np
import PIL.Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("shapes", os.path.join(REPO, "examples", "text_to_image_shapes.py"))
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)


def pixels(image):
    return np.asarray(image, dtype=np.float32) / 255


def test_the_pixel_rule_reads_every_attribute_of_real_images():
    rng = np.random.default_rng(0)
    targets = [t for t in shapes.combinations() for _ in range(5)]
    images = np.stack([pixels(shapes.draw(*t, rng)) for t in targets])
    assert shapes.adherence(images, targets) == {"colour": 1.0, "shape": 1.0, "quadrant": 1.0, "all": 1.0}


def test_the_pixel_rule_notices_wrong_attributes():
    rng = np.random.default_rng(1)
    image = pixels(shapes.draw("red", "triangle", "top left", rng))
    assert shapes.check_attributes(image) == {"colour": "red", "shape": "triangle", "quadrant": "top left"}
    assert shapes.check_attributes(image[:, ::-1])["quadrant"] == "top right"
    assert shapes.check_attributes(image[::-1])["quadrant"] == "bottom left"
    assert shapes.check_attributes(image[..., [2, 1, 0]])["colour"] == "blue"
    assert shapes.check_attributes(np.zeros_like(image)) == {"colour": None, "shape": None, "quadrant": None}
    wrong = shapes.adherence(image[None, :, ::-1], [("red", "triangle", "top left")])
    assert wrong == {"colour": 1.0, "shape": 1.0, "quadrant": 0.0, "all": 0.0}


def test_training_captions_name_the_drawn_attributes_and_skip_held_out_combinations():
    dataset, rows = shapes.make_dataset(300, seed=0)
    assert not set(rows) & set(shapes.HELD_OUT)
    assert len(set(rows)) == len(shapes.combinations(include_held_out=False))  # every other combination occurs
    for (colour, shape, quadrant), text in zip(rows, dataset["text"]):
        text = text.lower()
        assert any(w in text for w in shapes.COLOUR_WORDS[colour])
        assert any(w in text for w in shapes.SHAPE_WORDS[shape])
        assert any(w in text for w in shapes.QUADRANT_WORDS[quadrant])
    assert len(set(dataset["text"])) > 150  # varied wording
    assert shapes.check_attributes(pixels(dataset[0]["image"])) == dict(zip(shapes.ATTRIBUTES, rows[0]))


@pytest.mark.slow
def test_quick_mode_trains_samples_and_reports_adherence(tmp_path):
    result = shapes.main(["--quick", "--output_dir", str(tmp_path)])
    from rq_hf import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert pipe.transformer.config.condition_type == "text" and pipe.tokenizer is not None
    assert pipe.transformer.config.max_text_length == 16
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["adherence"] == result["adherence"]
    assert set(saved["adherence"]) == {"real images", "reconstructions", "samples, guidance 1", "samples, guidance 3"}
    assert saved["adherence"]["real images"]["all"] == 1.0
    for scale in ("1", "3"):
        grid = PIL.Image.open(tmp_path / f"samples_guidance_{scale}.png")
        assert grid.size == (2 * 32, 2 * 32 * 2)  # 2 prompts x 1 sample in --quick, drawn 2x
