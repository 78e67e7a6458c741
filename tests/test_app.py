"""examples/app.py without a browser: sampling, completion, depth view, loading and the Gradio layout."""

import os
import runpy
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_models import tiny_pipeline

APP = os.path.join(os.path.dirname(__file__), "..", "examples", "app.py")


@pytest.fixture(scope="module")
def app():
    return SimpleNamespace(**runpy.run_path(APP))


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _image(seed=0, size=8):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def test_samples_follow_class_and_seed(app, pipe):
    codes = app.sample_codes(pipe, 3, seed=5, class_name="dog", top_k=8, guidance_scale=2.0)
    assert codes.shape == (3, 4, 4, 2) and codes.dtype == torch.long
    # image i uses seed + i, whatever the batch
    alone = app.sample_codes(pipe, 1, seed=6, class_name="dog", top_k=8, guidance_scale=2.0)
    assert torch.equal(alone[0], codes[1])
    other = app.sample_codes(pipe, 3, seed=5, class_name="owl", top_k=8, guidance_scale=2.0)
    assert not torch.equal(other, codes)
    expected = pipe(class_labels=["dog"] * 3, top_k=8, guidance_scale=2.0, output_type="latent",
                    generator=[torch.Generator().manual_seed(5 + i) for i in range(3)]).images
    assert torch.equal(codes, expected)
    with pytest.raises(ValueError, match="class_name"):
        app.sample_codes(pipe, 1, class_name="emu")
    with pytest.raises(ValueError, match="num_images"):
        app.sample_codes(pipe, 0, class_name="dog")


def test_progress_reports_every_position(app, pipe):
    seen = []
    app.sample_codes(pipe, 1, class_name="cat", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 16) for i in range(1, 17)]


def test_sampling_widgets_switch_filters_off(app):
    assert app._sampling_kwargs(0, 1.0, 1.0, 1.0) == {"top_k": None, "top_p": None, "temperature": 1.0,
                                                     "guidance_scale": 1.0}
    assert app._sampling_kwargs(8, 0.9, 0.5, 3.0) == {"top_k": 8, "top_p": 0.9, "temperature": 0.5,
                                                     "guidance_scale": 3.0}


def test_completion_keeps_the_first_positions(app, pipe):
    image = _image()
    kept = 6
    codes = app.sample_codes(pipe, 2, seed=0, class_name="cat", image=image, num_kept_positions=kept)
    source = app.encode_image(pipe, image)
    flat, source_flat = codes.reshape(2, 16, 2), source.reshape(1, 16, 2)
    assert torch.equal(flat[:, :kept], source_flat[:, :kept].expand(2, -1, -1))
    assert not torch.equal(flat[:, kept:], source_flat[:, kept:].expand(2, -1, -1))
    preview = np.array(app.kept_preview(pipe, image, kept))
    reconstruction = np.array(app.decode(pipe, source)[0])
    # 4x4 positions of 2x2 pixels: positions 0-5 are rows 0-3 of columns 0-7, and columns 0-3 of rows 2-3
    assert np.array_equal(preview[:2], reconstruction[:2]) and np.array_equal(preview[2:4, :4], reconstruction[2:4, :4])
    assert (preview[2:4, 4:] == 128).all() and (preview[4:] == 128).all()


def test_depth_views_go_coarse_to_fine(app, pipe):
    codes = app.encode_image(pipe, _image(1))
    views = app.depth_views(pipe, codes)
    assert len(views) == 2 and all(view.size == (8, 8) for view in views)
    assert np.array_equal(np.array(views[-1]), np.array(app.decode(pipe, codes)[0]))
    assert np.array_equal(np.array(views[0]), np.array(app.decode(pipe, codes[..., :1])[0]))
    assert not np.array_equal(np.array(views[0]), np.array(views[1]))


def test_enlarge_is_an_integer_nearest_scale(app):
    image = _image(2)
    big = app.enlarge(image, 20)
    assert big.size == (24, 24)
    assert np.array_equal(np.array(big)[::3, ::3], np.array(image))


def test_condition_kind_and_arguments(app, pipe):
    assert app.condition_kind(pipe) == "class" and app.class_choices(pipe) == ["cat", "dog", "owl"]
    assert app._condition_kwargs(pipe, 2, "owl", None) == {"class_labels": [2, 2]}
    unconditional = tiny_pipeline(num_classes=None)
    assert app.condition_kind(unconditional) == "none" and app.class_choices(unconditional) == []
    assert app._condition_kwargs(unconditional, 3, None, None) == {"num_images": 3}
    assert app.sample_codes(unconditional, 2, seed=1).shape == (2, 4, 4, 2)
    # text-conditional pipelines (a tokenizer component, or config.condition_type == "text") get the prompt
    text = SimpleNamespace(tokenizer=object(), transformer=SimpleNamespace(config=SimpleNamespace(num_classes=None)))
    assert app.condition_kind(text) == "text"
    assert app._condition_kwargs(text, 2, None, "a red square") == {"prompt": ["a red square"] * 2}
    text_config = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(condition_type="text",
                                                                                      num_classes=None)))
    assert app.condition_kind(text_config) == "text"


def test_missing_default_model_says_how_to_make_it(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="python examples/quickstart.py --output_dir quickstart"):
        app.load_pipeline(app.DEFAULT_MODEL_PATH, "cpu")
    with pytest.raises(SystemExit, match="no pipeline folder"):
        app.load_pipeline(str(tmp_path / "nowhere" / "pipe"), "cpu")
    with pytest.raises(SystemExit, match="could not load a pipeline"):  # offline: not on the Hub either
        app.load_pipeline("someone/no-such-pipeline", "cpu")


def test_loads_a_saved_pipeline(app, pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = app.load_pipeline(str(tmp_path / "pipe"), "cpu")
    assert app.class_choices(loaded) == ["cat", "dog", "owl"]
    assert torch.equal(app.sample_codes(loaded, 2, seed=3, class_name="dog"),
                       app.sample_codes(pipe, 2, seed=3, class_name="dog"))


def test_layout_follows_the_condition(app, pipe):
    pytest.importorskip("gradio")
    components = {c.elem_id: c for c in app.build_demo(pipe, "tiny").blocks.values() if getattr(c, "elem_id", None)}
    assert [choice[0] for choice in components["class-picker"].choices] == ["cat", "dog", "owl"]
    assert components["class-picker"].visible and not components["prompt"].visible
    assert components["num-kept"].maximum == 16
    unconditional = app.build_demo(tiny_pipeline(num_classes=None), "tiny")
    components = {c.elem_id: c for c in unconditional.blocks.values() if getattr(c, "elem_id", None)}
    assert not components["class-picker"].visible and not components["guidance"].visible
