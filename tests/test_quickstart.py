"""examples/quickstart.py --quick: both stages, reload, sample grid, reconstructions and metrics (seconds)."""

import importlib.util
import json
import os

import numpy as np
import PIL.Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
        reason="needs the Debian package dataset-fashion-mnist (no network in tests)",
    ),
]


def test_quick_mode_writes_pipeline_grids_and_metrics(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(REPO, "examples", "quickstart.py"))
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)

    metrics = quickstart.main(["--quick", "--output_dir", str(tmp_path), "--mixed_precision", "no",
                               "--guidance_schedule", "linear"])

    from rq_hf.data import FASHION_MNIST_CLASSES
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert [pipe.id2label[i] for i in range(10)] == list(FASHION_MNIST_CLASSES)
    assert pipe.transformer.config.code_shape == [8, 8, 4] and pipe.vqvae.config.codebook_size == 256

    samples = PIL.Image.open(tmp_path / "samples_per_class.png")
    assert samples.size == (2 * 32, 2 * 32 * 10)  # one 32x32 sample per class row, drawn 2x
    recon = np.asarray(PIL.Image.open(tmp_path / "reconstructions.png").convert("L"))
    assert recon.shape == (2 * 32 * 2, 2 * 32 * 10) and recon.std() > 0

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_test_images"] == 64
    assert 0 < saved["test_bits_per_code"] < 20 and 0 < saved["test_psnr_db"] < 100
    assert saved["test_bits_per_code"] == pytest.approx(metrics["test_bits_per_code"])
    out = capsys.readouterr().out
    assert "Reconstruction PSNR" in out and "bits per code" in out
    # the shipped classifier judges real test images, reconstructions and 10 samples (one per class)
    assert saved["accuracy_real"] > 0.7  # 64 real test images; chance is 0.1
    assert 0 <= saved["accuracy_reconstructions"] <= 1 and saved["num_accuracy_samples"] == 10
    assert saved["accuracy_samples"] in [i / 10 for i in range(11)]
    assert saved["sampling"]["guidance_schedule"] == "linear"
    assert "Class accuracy" in out
