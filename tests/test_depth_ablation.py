"""benchmarks/depth_ablation.py and equal_bits.py --quick: every model trained and evaluated, files written,
finished runs reused; the photo split keeps the test photos unseen."""

import importlib.util
import json
import math
import os
import sys

import PIL.Image
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_ablation_writes_tables_plot_and_reuses_runs(tmp_path):
    script = load_script("depth_ablation")
    argv = ["--quick", "--datasets", "fashion_mnist,photos32", "--seeds", "0,1", "--kmeans_depths", "2",
            "--output_dir", str(tmp_path)]
    results = script.main(argv)
    rows = results["rows"]
    labels = ["continuous 8x8 (ceiling)", "8x8x1 K=8", "8x8x2 K=8 shared", "8x8x2 K=8 per-depth",
              "8x8x4 K=8 shared", "8x8x4 K=8 per-depth", "8x8x8 K=8 shared", "8x8x8 K=8 per-depth",
              "8x8x2 K=8 shared k-means", "16x16x1 K=8", "continuous 16x16 (ceiling)"]
    assert [(r["dataset"], r["label"]) for r in rows] == [(d, m) for d in ("fashion_mnist", "photos32") for m in labels]
    for r in rows:
        assert r["seeds"] == [0, 1] and math.isfinite(r["psnr"]) and r["psnr_std"] >= 0 and -1 <= r["ssim"] <= 1
        if r["continuous"]:
            assert r["used_codes"] is None and r["residual_norm"] is None
            assert r["code_shape"][:2] == ([16, 16] if r["flat"] else [8, 8])
        else:
            assert r["code_shape"] == ([16, 16, 1] if r["flat"] else [8, 8, r["depth"]])
            assert len(r["used_codes"]) == len(r["residual_norm"]) == r["depth"]
            assert all(1 <= u <= 8 for u in r["used_codes"]) and all(n >= 0 for n in r["residual_norm"])
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * len(labels)  # datasets x seeds x models
    psnrs = {(json.loads(line)["key"]["dataset"], json.loads(line)["label"], json.loads(line)["key"]["seed"])
             for line in lines}
    assert len(psnrs) == len(lines)
    table = (tmp_path / "depth_ablation_k8.md").read_text()
    assert "### fashion_mnist" in table and "### photos32" in table and "| 16x16x1 K=8 |" in table
    with PIL.Image.open(tmp_path / "depth_ablation_k8.png") as image:
        assert image.format == "PNG" and image.width > 400

    again = script.main(argv)  # every run is found in runs.jsonl: nothing is trained again
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(lines)
    assert again["rows"] == json.loads(json.dumps(rows))

    # --cached_only trains nothing: seed 2 has no runs, so every row keeps seeds 0 and 1; a model never trained
    # (D = 3) is left out
    partial = script.main(["--quick", "--datasets", "fashion_mnist,photos32", "--seeds", "0,1,2", "--depths", "1,3",
                           "--kmeans_depths", "2", "--no_flat", "--cached_only", "--output_dir", str(tmp_path)])
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(lines)
    assert [r["label"] for r in partial["rows"] if r["dataset"] == "fashion_mnist"] == [
        "continuous 8x8 (ceiling)", "8x8x1 K=8", "8x8x2 K=8 shared k-means"]
    assert all(r["seeds"] == [0, 1] for r in partial["rows"])
    assert "| 8x8x1 K=8 | 3 | 0, 1 |" in (tmp_path / "depth_ablation_k8.md").read_text()
    # a D = 1 model is the same with a per-depth codebook: its runs are found by either
    per_depth = script.main(["--quick", "--datasets", "fashion_mnist", "--seeds", "0", "--depths", "1",
                             "--codebook_modes", "per_depth", "--no_flat", "--cached_only", "--output_dir",
                             str(tmp_path)])
    assert [r["label"] for r in per_depth["rows"]] == ["continuous 8x8 (ceiling)", "8x8x1 K=8"]
    nothing = script.main(["--quick", "--seeds", "0", "--cached_only", "--output_dir", str(tmp_path / "empty")])
    assert nothing["rows"] == [] and not (tmp_path / "empty" / "depth_ablation_k8.png").exists()


def test_continuous_twin_bypasses_the_quantizer():
    study = load_script("rqvae_study")
    args = load_script("depth_ablation").parse_args(["--quick"])
    spec = study.ModelSpec(32, 2, continuous=True)
    torch.manual_seed(0)
    vae = study.build_vae(spec, 1, 32, args).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        recon, commitment = study.reconstruct(vae, x, continuous=True)
        quantized, _ = study.reconstruct(vae, x, continuous=False)
        latents = vae.encode(x).latents
        expected = vae.decoder(vae.post_quant_conv(latents))
    assert torch.equal(recon, expected) and float(commitment) == 0.0
    assert not torch.allclose(recon, quantized)


def test_photo_split_keeps_test_photos_unseen():
    photos = load_script("photos")
    for photo_set in ("wheels", "all"):
        try:
            catalogue = photos.photo_catalogue(photo_set)
        except FileNotFoundError as error:  # the Debian packages are optional
            assert "apt-get install" in str(error)
            continue
        train, test = photos.split(catalogue)
        assert train and test and not {p.name for p in train} & {p.name for p in test}
        assert all(p.licence and p.package for p in catalogue)
    train, test = photos.split(photos.photo_catalogue("wheels"))
    images = photos.load_photos(test, 96)
    assert all(min(i.shape[1:]) == 96 and i.dtype == torch.uint8 for i in images)
    crops = photos.random_crops(images, 4, 64, torch.Generator().manual_seed(0), flip=False)
    assert crops.shape == (4, 3, 64, 64) and crops.min() >= -1 and crops.max() <= 1
    assert torch.equal(crops, photos.random_crops(images, 4, 64, torch.Generator().manual_seed(0), flip=False))
    with pytest.raises(ValueError, match="photo_set"):
        photos.photo_catalogue("imagenet")


def test_bad_arguments_are_rejected():
    script = load_script("depth_ablation")
    for argv in (["--datasets", "imagenet"], ["--flat_block_out_channels", "16,32,64"],
                 ["--codebook_modes", "both"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            script.parse_args(argv)


def test_quick_equal_bits_groups_models_by_bits(tmp_path):
    script = load_script("equal_bits")
    results = script.main(["--quick", "--seeds", "0", "--output_dir", str(tmp_path)])
    rows = results["rows"]
    assert [(r["codebook_size"], r["depth"]) for r in rows] == [(None, 1), (256, 1), (16, 2), (4, 4)]
    assert {r["bits_per_position"] for r in rows[1:]} == {8.0}
    for r in rows[1:]:
        assert [u + d for u, d in zip(r["used_codes"], r["dead_codes"])] == [r["codebook_size"]] * r["depth"]
    table = (tmp_path / "equal_bits.md").read_text()
    assert "| 8 | 8x8x2 K=16 per-depth |" in table and "| ∞ | continuous 8x8 (ceiling) |" in table
    with pytest.raises(SystemExit):
        script.parse_args(["--configs", "64"])
