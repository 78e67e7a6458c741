"""examples/extract_codes.py: a tiny RQ-VAE encodes a tiny labelled dataset into a codes dataset."""

import importlib.util
import io
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "extract_codes.py")


def load_script():
    spec = importlib.util.spec_from_file_location("extract_codes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_bytes(array):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    root = tmp_path_factory.mktemp("codes")
    torch.manual_seed(0)
    vae = RQVAEModel(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 2,
                     up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                     latent_channels=8, norm_num_groups=4, vq_embed_dim=8, mid_block_add_attention=False,
                     codebook_size=16, code_depth=3)
    vae.save_pretrained(str(root / "vae"))
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(5)]
    images = [{"bytes": png_bytes(a), "path": None} for a in arrays]
    images.insert(1, {"bytes": b"garbage", "path": "bad.png"})
    labels = [0, 2, 1, 2, 0, 1]
    label = datasets.ClassLabel(names=["x", "y", "z"])
    features = datasets.Features({"image": datasets.Image(), "label": label})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    dataset.save_to_disk(str(root / "data"))
    return root, vae, labels


def test_extract_codes_shapes_labels_and_matches_encode(setup):
    root, vae, labels = setup
    script = load_script()
    out = root / "out"
    script.main(["--vqvae_model_name_or_path", str(root / "vae"), "--dataset_name", str(root / "data"),
                 "--resolution", "16", "--batch_size", "2", "--output_dir", str(out), "--device", "cpu"])
    codes = datasets.load_from_disk(str(out))
    assert len(codes) == 5  # the undecodable image was skipped
    assert codes.features["codes"].shape == (8, 8, 3)
    assert codes.features["label"].names == ["x", "y", "z"]
    assert codes["label"] == [0, 1, 2, 0, 1]  # labels stay aligned after the skipped row
    array = np.asarray(codes.with_format("numpy")["codes"])
    assert array.shape == (5, 8, 8, 3) and array.min() >= 0 and array.max() < 16
    source = datasets.load_from_disk(str(root / "data"))
    first = np.asarray(source[0]["image"], dtype=np.float32)[None, None] / 127.5 - 1
    with torch.no_grad():
        expected = vae.eval().encode(torch.from_numpy(first)).codes[0].numpy()
    np.testing.assert_array_equal(array[0], expected)


def test_stochastic_codes_are_seeded_and_differ_from_nearest(setup):
    root, _, _ = setup
    script = load_script()
    common = ["--vqvae_model_name_or_path", str(root / "vae"), "--dataset_name", str(root / "data"),
              "--resolution", "16", "--device", "cpu", "--label_column", ""]
    nearest = script.extract_codes(script.parse_args(common + ["--output_dir", "unused"]))
    flags = common + ["--output_dir", "unused", "--stochastic", "--temperature", "5", "--seed", "3"]
    stochastic = [script.extract_codes(script.parse_args(flags)) for _ in range(2)]
    assert "label" not in nearest.column_names
    a, b = (np.asarray(s.with_format("numpy")["codes"]) for s in stochastic)
    np.testing.assert_array_equal(a, b)
    assert (a != np.asarray(nearest.with_format("numpy")["codes"])).any()


def test_bad_flags(setup):
    root, _, _ = setup
    script = load_script()
    with pytest.raises(ValueError, match="--temperature"):
        script.parse_args(["--vqvae_model_name_or_path", "x", "--dataset_name", "y", "--output_dir", "z",
                           "--temperature", "0"])
    with pytest.raises(ValueError, match="--dataset_name"):
        script.parse_args(["--vqvae_model_name_or_path", "x", "--output_dir", "z"])
