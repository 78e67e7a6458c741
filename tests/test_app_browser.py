"""examples/app.py in a real browser: the app runs on a free localhost port, headless Chromium drives it.

Skips where Debian's chromium / chromium-driver, selenium or gradio are missing (``.ci/run`` installs them).
"""

import os
import runpy
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
from tiny_models import tiny_pipeline

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
browser = SimpleNamespace(**runpy.run_path(os.path.join(EXAMPLES, "app_screenshot.py")))
if browser.missing_browser():
    pytest.skip(f"no browser for the app's browser tests: {browser.missing_browser()}", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs the demo extra: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the browser tests need selenium (dev extra)")
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return SimpleNamespace(**runpy.run_path(os.path.join(EXAMPLES, "app.py")))


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def url(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    pipe.save_pretrained(folder / "pipe")
    process, url = browser.start_app(str(folder / "pipe"), str(folder / "app.log"),
                                     extra_env={"GRADIO_TEMP_DIR": str(folder / "gradio"), "OMP_NUM_THREADS": "1"})
    yield url
    browser.stop_app(process)


@pytest.fixture(scope="module")
def driver():
    driver = browser.chromium()
    yield driver
    driver.quit()


def _same_image(src, expected):
    shown = np.array(browser.fetch_image(src).convert(expected.mode))
    return shown.shape == np.array(expected).shape and np.array_equal(shown, np.array(expected))


def test_pick_class_generate_and_see_images(app, pipe, url, driver):
    browser.open_app(driver, url)
    browser.pick_class(driver, "dog")
    driver.find_element(By.ID, "generate").click()
    shown = browser.gallery_images(driver, "samples", 4)
    assert [caption for _, caption in shown] == [f"dog · seed {i}" for i in range(4)]
    codes = app.sample_codes(pipe, 4, seed=0, class_name="dog", guidance_scale=2.0)
    expected = [app.enlarge(image) for image in app.decode(pipe, codes)]
    assert all(_same_image(src, image) for (src, _), image in zip(shown, expected))
    cat = app.decode(pipe, app.sample_codes(pipe, 1, seed=0, class_name="cat", guidance_scale=2.0))[0]
    assert not _same_image(shown[0][0], app.enlarge(cat))  # the picked class reached the model
    # the coarse-to-fine view of the first sample, then of the third once it is selected
    depths = browser.gallery_images(driver, "sample-depths", 2)
    assert [caption for _, caption in depths] == ["depth 1", "depth 1-2"]
    assert _same_image(depths[0][0], app.enlarge(app.depth_views(pipe, codes[:1])[0]))
    assert _same_image(depths[1][0], expected[0])
    driver.find_elements(By.CSS_SELECTOR, "#samples .grid-container button.thumbnail-item")[2].click()
    depths = browser.gallery_images(driver, "sample-depths", 2, previous=depths)
    assert _same_image(depths[1][0], expected[2])


def test_upload_complete_and_depth_view(app, pipe, url, driver, tmp_path):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image.save(tmp_path / "upload.png")
    browser.open_app(driver, url)
    browser.open_tab(driver, "From an image")
    browser.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 20,
                     "no upload field")
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(tmp_path / "upload.png"))
    browser.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload img"), 30, "the upload is not shown")
    driver.find_element(By.ID, "complete").click()
    shown = browser.gallery_images(driver, "completions", 5)
    assert [caption for _, caption in shown] == ["kept: 8 of 16"] + [f"seed {i}" for i in range(4)]
    assert _same_image(shown[0][0], app.enlarge(app.kept_preview(pipe, image, 8)))
    codes = app.sample_codes(pipe, 4, seed=0, class_name="cat", guidance_scale=2.0, image=image,
                             num_kept_positions=8)
    completions = app.decode(pipe, codes)
    assert all(_same_image(src, app.enlarge(expected)) for (src, _), expected in zip(shown[1:], completions))

    driver.find_element(By.ID, "depths").click()
    depths = browser.gallery_images(driver, "upload-depths", 2)
    views = app.depth_views(pipe, app.encode_image(pipe, image))
    assert all(_same_image(src, app.enlarge(view)) for (src, _), view in zip(depths, views))
