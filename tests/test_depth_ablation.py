"""benchmarks/depth_ablation.py --quick --no_inception: every model trained and evaluated, files written."""

import importlib.util
import json
import math
import os

import PIL.Image
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    path = os.path.join(ROOT, "benchmarks", "depth_ablation.py")
    spec = importlib.util.spec_from_file_location("depth_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_ablation_writes_json_table_and_plot(tmp_path):
    script = load_script()
    results = script.main(["--quick", "--no_inception", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    rows = saved["rows"]
    expected = [(d, m) for d in ("fashion_mnist", "photos") for m in ("8x8x1", "8x8x2", "8x8x4", "8x8x8", "16x16x1")]
    assert [(r["dataset"], r["model"]) for r in rows] == expected
    for r in rows:
        assert r["code_shape"] == ([16, 16, 1] if r["flat"] else [8, 8, r["depth"]])
        assert math.isfinite(r["psnr"]) and 0 < r["psnr"] < 100
        assert -1 <= r["ssim"] <= 1
        assert len(r["codebook_usage"]) == r["depth"] and all(0 < u <= 1 for u in r["codebook_usage"])
        assert r["rfid"] is None and r["num_images"] == 16 and r["train_seconds"] > 0
        assert r["paper_rfid"] == (None if r["flat"] else script.PAPER_RFID[r["depth"]])
    assert rows[0]["parameters"] == rows[3]["parameters"]  # the D models differ only in the quantizer
    assert {r["code_shape"][0] for r in rows if r["dataset"] == "photos"} == {8, 16}
    table = (tmp_path / "table.md").read_text()
    assert "### fashion_mnist" in table and "### photos" in table and "| 16x16x1 |" in table and "17.95" in table
    with PIL.Image.open(tmp_path / "depth_ablation.png") as image:
        assert image.format == "PNG" and image.width > 400


def test_photo_split_keeps_test_photos_unseen():
    script = load_script()
    assert not set(script.PHOTO_TRAIN) & set(script.PHOTO_TEST)
    args = script.parse_args(["--quick"])
    sample_batch, test = script.photo_data(args)
    batch = sample_batch(torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 32, 32) and test.shape == (16, 3, 32, 32)
    assert batch.min() >= -1 and batch.max() <= 1
    again = script.photo_data(args)[1]
    assert torch.equal(test, again)  # the test crops are fixed by the seed


def test_bad_arguments_are_rejected():
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--datasets", "imagenet"])
    with pytest.raises(SystemExit):
        script.parse_args(["--flat_block_out_channels", "16,32,64"])
