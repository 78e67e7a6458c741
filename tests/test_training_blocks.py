"""Tests of rq_hf.training: adversarial losses, PatchGAN, LPIPS, data loading/transforms, EMA."""

import logging
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from rq_hf.data import (
    FASHION_MNIST_CLASSES,
    ImageTransform,
    check_image_dataset,
    collate_images,
    load_fashion_mnist,
    load_image_dataset,
    with_image_transform,
)
from rq_hf.training import (
    LPIPS,
    PatchGANDiscriminator,
    adaptive_weight,
    adopt_weight,
    generator_adversarial_loss,
    hinge_d_loss,
    make_ema_model,
)

# ------------------------------------------------------------------------------------------ adversarial


def test_hinge_d_loss_known_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2] -> mean 2.5 / 3
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2]   -> mean 1
    expected = 0.5 * (2.5 / 3 + 1.0)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    # saturated: real >= 1 and fake <= -1 give zero; raw logits, not sigmoid (sigmoid would never reach it)
    assert hinge_d_loss(torch.full((2, 1, 3, 3), 5.0), torch.full((2, 1, 3, 3), -5.0)).item() == 0.0
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_adaptive_weight_is_ratio_of_grad_norms():
    torch.manual_seed(0)
    body = torch.nn.Linear(4, 4)
    last = torch.nn.Linear(4, 3)
    out = last(body(torch.randn(5, 4)))
    nll = (out**2).mean()
    g = -(out * torch.tensor([1.0, -2.0, 0.5])).mean()
    weight = adaptive_weight(nll, g, last.weight)
    gn = torch.autograd.grad(nll, last.weight, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, last.weight, retain_graph=True)[0].norm()
    assert weight.item() == pytest.approx((gn / (gg + 1e-4)).item(), rel=1e-5)
    assert not weight.requires_grad
    (nll + weight * g).backward()  # graph retained for the real backward
    assert body.weight.grad is not None
    # clamped to max_weight when the adversarial gradient is tiny
    out = last(body(torch.randn(5, 4)))
    assert adaptive_weight((out**2).mean(), 1e-12 * out.mean(), last.weight, max_weight=7.0).item() == 7.0
    with pytest.raises(ValueError, match="g_loss"):
        adaptive_weight((out**2).mean(), torch.tensor(1.0), last.weight)


def test_adopt_weight_threshold():
    assert adopt_weight(0.75, global_step=99, threshold=100) == 0.0
    assert adopt_weight(0.75, global_step=100, threshold=100) == 0.75
    assert adopt_weight(0.75, global_step=0) == 0.75
    assert adopt_weight(0.75, global_step=3, threshold=10, value=0.1) == 0.1


# ---------------------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("norm_type", ["group", "batch", "none"])
def test_discriminator_output_shapes(norm_type):
    disc = PatchGANDiscriminator(in_channels=1, base_channels=8, n_layers=3, norm_type=norm_type)
    assert disc(torch.randn(2, 1, 32, 32)).shape == (2, 1, 2, 2)
    assert disc(torch.randn(2, 1, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="sample"):
        disc(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 24x24"):
        disc(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="norm_type"):
        PatchGANDiscriminator(norm_type="act")


def test_discriminator_init_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    disc = PatchGANDiscriminator(in_channels=3, base_channels=16, n_layers=2)
    conv_std = torch.cat([m.weight.flatten() for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]).std()
    assert 0.015 < conv_std.item() < 0.025  # N(0, 0.02) as in taming
    disc.save_pretrained(tmp_path / "disc")
    assert (tmp_path / "disc" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PatchGANDiscriminator.from_pretrained(tmp_path / "disc")
    assert loaded.config.base_channels == 16 and loaded.config.norm_type == "group"
    x = torch.randn(2, 3, 32, 32)
    disc.eval()
    torch.testing.assert_close(loaded(x), disc(x))


# ------------------------------------------------------------------------------------------------ LPIPS


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random LPIPS weights saved by the test, in both formats (no download possible)."""
    torch.manual_seed(0)
    model = LPIPS()
    folder = tmp_path_factory.mktemp("lpips")
    model.save_pretrained(folder / "lpips.safetensors")
    state = model.state_dict()
    vgg = {k: v for k, v in state.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's vgg16 file has extra keys: ignored
    torch.save(vgg, folder / "vgg16.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / "lin.pth")
    return model, folder


def test_lpips_distance_and_round_trip(lpips_files):
    model, folder = lpips_files
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d = model(x, y)
    assert d.shape == (2,)
    assert torch.all(d > 0)
    assert torch.all(model(x, x) == 0)
    gray = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.all(model(gray, gray.flip(-1)) > 0)
    for source in (folder / "lpips.safetensors", [folder / "vgg16.pth", folder / "lin.pth"]):
        loaded = LPIPS.from_pretrained(source)
        torch.testing.assert_close(loaded(x, y), d)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded.train()
    assert not loaded.training
    x.requires_grad_(True)
    loaded(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_errors(lpips_files, tmp_path):
    _, folder = lpips_files
    with pytest.raises(ValueError, match="cannot be downloaded.*features"):
        LPIPS.from_pretrained(None)
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        LPIPS.from_pretrained(folder / "vgg16.pth")  # linear layers missing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LPIPS.from_pretrained(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="same shape"):
        LPIPS()(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))


# ------------------------------------------------------------------------------------------- transforms


def _gradient_image(width, height, mode="RGB"):
    array = (np.arange(width * height * 3).reshape(height, width, 3) % 256).astype(np.uint8)
    return PIL.Image.fromarray(array).convert(mode)


def test_image_transform_shapes_range_and_determinism():
    image = _gradient_image(48, 40)
    out = ImageTransform(32, center_crop=True)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert ImageTransform(16, num_channels=1, center_crop=True)(image).shape == (1, 16, 16)
    assert ImageTransform(16, num_channels=None, center_crop=True)(image.convert("L")).shape == (1, 16, 16)
    # exact values: white -> 1, black -> -1
    white = PIL.Image.new("L", (8, 8), 255)
    assert torch.all(ImageTransform(8, num_channels=1, center_crop=True)(white) == 1.0)
    # padding 28 -> 32 keeps the pixels and adds a black (-1) border
    small = PIL.Image.fromarray(np.full((28, 28), 255, dtype=np.uint8))
    padded = ImageTransform(32, num_channels=1, center_crop=True, pad_to_resolution=True)(small)
    assert padded.shape == (1, 32, 32)
    assert torch.all(padded[:, 2:30, 2:30] == 1.0)
    assert padded[:, :2].eq(-1).all() and padded[:, :, 30:].eq(-1).all()
    resized = ImageTransform(32, num_channels=1, center_crop=True)(small)
    assert torch.all(resized == 1.0)
    # random crop + flip: same generator seed -> same tensor; different seeds -> different crops
    random_transform = ImageTransform(24, random_flip=True)
    big = _gradient_image(64, 40)
    a = random_transform(big, generator=torch.Generator().manual_seed(1))
    b = random_transform(big, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    outs = {random_transform(big, generator=torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outs) > 1
    torch.manual_seed(3)
    c = random_transform(big)
    torch.manual_seed(3)
    torch.testing.assert_close(random_transform(big), c)
    flip = ImageTransform(16, center_crop=True, random_flip=True)
    flipped = [flip(_gradient_image(16, 16), generator=torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(torch.equal(f, flipped[0].flip(-1)) for f in flipped)
    with pytest.raises(ValueError, match="resolution"):
        ImageTransform(0)
    with pytest.raises(ValueError, match="num_channels"):
        ImageTransform(8, num_channels=2)
    with pytest.raises(TypeError, match="image"):
        ImageTransform(8)(np.zeros((8, 8)))


# ------------------------------------------------------------------------------------------------- data


def _make_imagefolder(root, corrupt=False):
    for label in ("cat", "dog"):
        os.makedirs(root / label, exist_ok=True)
        for i in range(3):
            _gradient_image(20 + i, 20).save(root / label / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return root


def test_load_image_dataset_imagefolder_and_save_to_disk(tmp_path):
    folder = _make_imagefolder(tmp_path / "images")
    ds = load_image_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "c"), label_column="label")
    assert len(ds) == 6 and set(ds.column_names) == {"image", "label"}
    ds.save_to_disk(str(tmp_path / "saved"))
    saved = load_image_dataset(dataset_name=str(tmp_path / "saved"))
    assert len(saved) == 6 and saved[0]["image"].size == ds[0]["image"].size
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_image_dataset(dataset_name=str(tmp_path / "dict"), split="validation")) == 1
    with pytest.raises(ValueError, match="available: \\['train', 'validation'\\]"):
        load_image_dataset(dataset_name=str(tmp_path / "dict"), split="test")

    transformed = with_image_transform(ds, ImageTransform(16, center_crop=True), label_column="label")
    batch = collate_images([transformed[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["num_skipped"] == 0
    assert batch["class_labels"].dtype == torch.long and batch["class_labels"].tolist() == ds["label"][:4]


def test_load_image_dataset_errors(tmp_path):
    folder = _make_imagefolder(tmp_path / "images")
    with pytest.raises(ValueError, match=r"`image_column` 'img'.*available columns: \['image', 'label'\]"):
        load_image_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"), image_column="img")
    with pytest.raises(ValueError, match="label_column"):
        load_image_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "c"), label_column="class")
    with pytest.raises(ValueError, match="exactly one"):
        load_image_dataset()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_dataset(train_data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    empty.save_to_disk(str(tmp_path / "empty_saved"))
    with pytest.raises(ValueError, match="empty"):
        load_image_dataset(dataset_name=str(tmp_path / "empty_saved"))
    with pytest.raises(ValueError, match="empty"):
        check_image_dataset(empty)
    datasets.Dataset.from_dict({"image": ["a.png"]}).save_to_disk(str(tmp_path / "strings"))
    with pytest.raises(ValueError, match="datasets.Image feature"):
        load_image_dataset(dataset_name=str(tmp_path / "strings"))


def test_corrupt_image_is_skipped_with_warning_or_raises(tmp_path, caplog):
    folder = _make_imagefolder(tmp_path / "images", corrupt=True)
    ds = load_image_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "c"), label_column="label")
    assert len(ds) == 7
    transformed = with_image_transform(ds, ImageTransform(16, center_crop=True), label_column="label")
    with caplog.at_level(logging.WARNING, logger="rq_hf.data"):
        rows = [transformed[i] for i in range(len(transformed))]
    assert sum(row["pixel_values"] is None for row in rows) == 1
    assert "broken.png" in caplog.text
    batch = collate_images(rows)
    assert batch["num_skipped"] == 1 and batch["pixel_values"].shape == (6, 3, 16, 16)
    assert len(batch["class_labels"]) == 6
    loader = torch.utils.data.DataLoader(transformed, batch_size=7, collate_fn=collate_images)
    assert next(iter(loader))["num_skipped"] == 1
    assert collate_images([r for r in rows if r["pixel_values"] is None])["pixel_values"] is None

    strict = with_image_transform(ds, ImageTransform(16, center_crop=True), on_decode_error="raise")
    with pytest.raises(ValueError, match="broken.png"):
        [strict[i] for i in range(len(strict))]


def test_load_fashion_mnist_offline_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'fashion_mnist' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist.*OfflineModeIsEnabled"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_load_fashion_mnist_from_small_idx_files(tmp_path):
    import gzip

    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in images.shape)
        f.write(header + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + labels.tobytes())
    ds = load_fashion_mnist("test", root=tmp_path)
    assert ds["label"] == labels.tolist()
    np.testing.assert_array_equal(np.asarray(ds[2]["image"]), images[2])  # lossless


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="package dataset-fashion-mnist absent")
@pytest.mark.parametrize("split,rows", [("test", 10000), ("train", 60000)])
def test_load_fashion_mnist_real_files(split, rows):
    ds = load_fashion_mnist(split)
    assert len(ds) == rows
    assert ds.features["label"].names == list(FASHION_MNIST_CLASSES) and len(FASHION_MNIST_CLASSES) == 10
    image = ds[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert set(ds.select(range(500))["label"]) == set(range(10))


# -------------------------------------------------------------------------------------------------- EMA


def test_ema_averages_floats_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = make_ema_model(model, decay=0.9)
    assert not any(p.requires_grad for p in ema.parameters())
    ema.update_parameters(model)  # first update copies
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3))  # updates running stats and num_batches_tracked (an integer buffer)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, start + 0.1)
    torch.testing.assert_close(ema.module[1].running_mean, 0.1 * model[1].running_mean)
    assert ema.module[1].num_batches_tracked.item() == 3
    with pytest.raises(ValueError, match="decay"):
        make_ema_model(model, decay=1.5)
