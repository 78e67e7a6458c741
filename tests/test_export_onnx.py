"""python -m rq_hf.export_onnx: ONNX graphs of a tiny RQ-VAE agree with PyTorch in onnxruntime."""

import json
import os
import runpy

import pytest
import torch
from tiny_models import tiny_transformer, tiny_vae

pytest.importorskip("onnxscript", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
onnxruntime = pytest.importorskip("onnxruntime", reason="the check needs the onnx extra: pip install -e '.[onnx]'")

from rq_hf import RQTransformerPipeline, RQVAEModel  # noqa: E402
from rq_hf.export_onnx import export_rqvae_to_onnx, main  # noqa: E402

BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "onnx_agreement.py")


def _images(batch, seed, size=8):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_graphs_agree_with_pytorch_for_any_batch(tmp_path):
    vae = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    paths = export_rqvae_to_onnx(vae, tmp_path / "onnx")
    assert sorted(os.listdir(tmp_path / "onnx")) == ["README.md", "config.json", "decoder.onnx", "encoder.onnx"]
    assert RQVAEModel.from_config(RQVAEModel.load_config(tmp_path / "onnx")).config.code_depth == 2
    encoder = onnxruntime.InferenceSession(paths["encoder"], providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(paths["decoder"], providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # exported with a batch of 2: the batch is dynamic
        images = _images(batch, seed=batch)
        with torch.no_grad():
            codes = vae.encode(images).codes
            reference = vae.decode_codes(codes).sample
        onnx_codes = encoder.run(None, {"images": images.numpy()})[0]
        assert onnx_codes.dtype.name == "int64" and torch.equal(torch.from_numpy(onnx_codes), codes)
        onnx_images = torch.from_numpy(decoder.run(None, {"codes": codes.numpy()})[0])
        assert onnx_images.shape == reference.shape == (batch, 3, 8, 8)
        torch.testing.assert_close(onnx_images, reference, atol=1e-4, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items()) and not vae.training


def test_cli_on_a_pipeline_folder_with_one_codebook_per_depth(tmp_path, capsys):
    torch.manual_seed(0)
    vae = RQVAEModel(**{**tiny_vae().config, "shared_codebook": False}).eval()
    RQTransformerPipeline(vqvae=vae, transformer=tiny_transformer()).save_pretrained(tmp_path / "pipe")
    report = main(["--model_path", str(tmp_path / "pipe"), "--output_dir", str(tmp_path / "onnx"),
                   "--num_check_images", "6"])
    assert report["codes_agreement"] == 1.0 and report["max_abs_image_diff"] < 1e-4 and report["batch_size"] == 6
    assert report["encoder_bytes"] == os.path.getsize(tmp_path / "onnx" / "encoder.onnx")
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):]) == report  # the figures are printed as JSON
    assert json.load(open(tmp_path / "onnx" / "config.json"))["shared_codebook"] is False
    # benchmarks/onnx_agreement.py sums the check over batches
    measure = runpy.run_path(BENCHMARK)["measure"]
    totals = measure(vae, str(tmp_path / "onnx"), _images(7, seed=9), batch_size=3)
    assert (totals["images"], totals["codes"], totals["differing_codes"]) == (7, 7 * 16 * 2, 0)
    assert totals["codes_agreement"] == 1.0 and totals["max_abs_end_to_end_diff"] < 1e-4


def test_bad_size_and_failed_export_leave_the_folder_alone(tmp_path, monkeypatch):
    vae = tiny_vae()
    with pytest.raises(ValueError, match="`height` must be a positive multiple of the down-sampling factor 2"):
        export_rqvae_to_onnx(vae, tmp_path / "onnx", height=7)
    (tmp_path / "onnx").mkdir(exist_ok=True)
    (tmp_path / "onnx" / "encoder.onnx").write_text("earlier export")

    def fail(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_rqvae_to_onnx(vae, tmp_path / "onnx")
    assert os.listdir(tmp_path / "onnx") == ["encoder.onnx"]
    assert (tmp_path / "onnx" / "encoder.onnx").read_text() == "earlier export"
    assert os.listdir(tmp_path) == ["onnx"]


def test_agreement_benchmark_counts_and_near_tie_gaps(tmp_path):
    bench = runpy.run_path(BENCHMARK)
    vae = tiny_vae()
    images = _images(3, seed=4)
    with torch.no_grad():
        encoded = vae.encode(images)
        assert bench["tie_gaps"](vae, encoded.latents, encoded.codes, encoded.codes) == []
        other = encoded.codes.clone()
        other[1, 2, 3, 1] = (other[1, 2, 3, 1] + 1) % 32  # one differing code, at the second depth
        gaps = bench["tie_gaps"](vae, encoded.latents, encoded.codes, other)
        residual = encoded.latents[1, :, 2, 3] - vae.quantizer.codebook(0)[encoded.codes[1, 2, 3, 0]]
        distances = (residual[None] - vae.quantizer.codebook(1)).pow(2).sum(1)
        mine, theirs = distances[encoded.codes[1, 2, 3, 1]], distances[other[1, 2, 3, 1]]
    assert gaps == pytest.approx([((theirs - mine).abs() / mine).item()]) and gaps[0] > 0
