"""examples/evaluate.py and rq_hf.evaluation.model_evaluation on a tiny RQ-VAE / pipeline and a handful of images."""

import importlib.util
import json
import math
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel
from rq_hf.evaluation import evaluate_code_nll, evaluate_generation, evaluate_reconstruction, load_image_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, D, NUM_CLASSES = 16, 2, 3


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", os.path.join(ROOT, "examples", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_vae():
    torch.manual_seed(0)
    return RQVAEModel(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=8, norm_num_groups=4, sample_size=16, codebook_size=K, code_depth=D,
    ).eval()


def tiny_transformer():
    torch.manual_seed(1)
    config = RQTransformerConfig(
        vocab_size=K, code_shape=[8, 8, D], hidden_size=16, num_spatial_layers=1, num_depth_layers=1,
        num_attention_heads=2, num_classes=NUM_CLASSES, resid_dropout=0.0,
    )
    return RQTransformerForCausalImageModeling(config).eval()


def make_images(n, seed):
    """Grayscale 14x14 images of three classes (horizontal stripes, vertical stripes, a blob) with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:14, 0:14]
    images, labels = [], []
    for i in range(n):
        label = i % NUM_CLASSES
        base = [np.sin(yy * 1.3 + i), np.sin(xx * 1.3 + i), np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 12) * 2 - 1]
        base = base[label]
        pixels = np.clip((base + 0.2 * rng.standard_normal((14, 14)) + 1) * 127.5, 0, 255).astype(np.uint8)
        images.append(PIL.Image.fromarray(pixels, mode="L"))
        labels.append(label)
    return {"image": images, "label": labels}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=NUM_CLASSES)})
    splits = {
        "train": datasets.Dataset.from_dict(make_images(24, 0), features=features),
        "test": datasets.Dataset.from_dict(make_images(12, 1), features=features),
    }
    datasets.DatasetDict(splits).save_to_disk(str(root / "data"))
    vae = tiny_vae()
    vae.save_pretrained(str(root / "rqvae"))
    RQTransformerPipeline(vqvae=vae, transformer=tiny_transformer()).save_pretrained(str(root / "pipeline"))
    return root


def check_reconstruction(rec, num_images):
    assert rec["num_images"] == num_images
    assert rec["code_shape"] == [8, 8, D]
    assert math.isfinite(rec["psnr"]) and 0 < rec["psnr"] < 100
    assert -1 <= rec["ssim"] <= 1
    assert len(rec["codebook_usage"]) == D and all(0 < u <= 1 for u in rec["codebook_usage"])
    assert len(rec["perplexity"]) == D and all(1 <= p <= K for p in rec["perplexity"])
    assert rec["rfid"] is None and rec["rfid_real_vs_real"] is None  # --no_inception


def test_cli_on_an_rqvae_folder(folders, capsys):
    out = folders / "rqvae.json"
    report = load_cli().main([
        "--model_path", str(folders / "rqvae"), "--dataset_name", str(folders / "data"), "--split", "test",
        "--pad_to_resolution", "--no_inception", "--output_json", str(out),
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["model_type"] == "rqvae" and report["resolution"] == 16
    check_reconstruction(report["reconstruction"], 12)
    assert "generation" not in report and "nll" not in report
    table = capsys.readouterr().out
    assert "| reconstruction PSNR (dB) |" in table and "rFID" not in table


def test_cli_on_a_pipeline_folder_trains_and_caches_the_classifier(folders, capsys):
    out = folders / "eval" / "pipeline.json"
    argv = [
        "--model_path", str(folders / "pipeline"), "--dataset_name", str(folders / "data"), "--split", "test",
        "--pad_to_resolution", "--no_inception", "--num_images", "6", "--max_samples", "12",
        "--classifier_epochs", "1", "--output_json", str(out), "--seed", "3",
    ]
    report = load_cli().main(argv)
    saved = json.loads(out.read_text())
    assert saved["model_type"] == "pipeline"
    check_reconstruction(saved["reconstruction"], 12)
    gen = saved["generation"]
    assert gen["num_images"] == 6 and "fid" not in gen  # no Inception
    assert math.isfinite(gen["classifier_fid"]) and gen["classifier_fid"] >= 0
    for key in ("precision", "recall", "real_vs_real_precision", "real_vs_real_recall", "class_accuracy"):
        assert 0 <= gen[key] <= 1, key
    nll = saved["nll"]
    assert nll["uniform_bits_per_code"] == pytest.approx(math.log2(K))
    # an untrained transformer is near uniform: between 0 and log2 K plus a margin
    assert 0 < nll["bits_per_code"] < math.log2(K) + 2
    assert nll["num_codes"] == 12 * 8 * 8 * D
    assert os.path.isfile(saved["classifier_path"])
    assert "| NLL bits/code" in capsys.readouterr().out
    # second run: same classifier file reused, same seeds -> same report
    again = load_cli().main(argv)
    assert "reused" in capsys.readouterr().err
    assert again["generation"] == report["generation"] and again["nll"] == report["nll"]


def test_cli_rejects_a_folder_without_a_model(folders):
    with pytest.raises(ValueError, match="model_path"):
        load_cli().main(["--model_path", str(folders / "data"), "--dataset_name", str(folders / "data"),
                         "--no_inception"])


def test_reconstruction_of_a_perfect_autoencoder_hits_the_psnr_cap(folders):
    """Identity 'decoder': PSNR is the 100 dB cap, SSIM 1; the metric, not the model, is under test here."""
    data = datasets.load_from_disk(str(folders / "data"))["test"]
    images, labels = load_image_tensors(data, 16, num_channels=1, pad_to_resolution=True, label_column="label")
    assert images.shape == (12, 1, 16, 16) and labels.tolist() == [i % 3 for i in range(12)]
    vae = tiny_vae()
    stash = {}

    class Identity(torch.nn.Module):
        config = vae.config

        def parameters(self):
            return vae.parameters()

        def encode(self, x):
            stash["x"] = x
            return vae.encode(x)

        def decode_codes(self, codes):
            return type("Out", (), {"sample": stash["x"]})

    rec = evaluate_reconstruction(Identity(), images, batch_size=5)
    assert rec["psnr"] == pytest.approx(100.0) and rec["ssim"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="fid_num_images"):
        evaluate_reconstruction(vae, images, fid_num_images=0)


def test_generation_and_nll_check_their_inputs(folders):
    pipe = RQTransformerPipeline.from_pretrained(str(folders / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    images = torch.zeros(6, 1, 16, 16)
    with pytest.raises(ValueError, match="2 \\* num_images"):
        evaluate_generation(pipe, images, num_images=4)
    with pytest.raises(ValueError, match="labels"):
        evaluate_code_nll(pipe.vqvae, pipe.transformer, images)
