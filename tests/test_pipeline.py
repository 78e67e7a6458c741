import json
import os
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from script_helpers import assert_pipeline_loads_without_rq_hf
from tiny_models import tiny_transformer, tiny_vae  # noqa: E402

from rq_hf import RQTransformerPipeline, RQVAEModel

NAMES = {0: "T-shirt/top", 1: "Trouser", 2: "Sneaker, trainer"}


@pytest.fixture(scope="module")
def pipe():
    return RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(), id2label=NAMES)


@pytest.fixture(scope="module")
def uncond_pipe():
    return RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(num_classes=None))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_output_types_and_shapes(pipe):
    pil = pipe(class_labels=[0, 1], generator=gen(0)).images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (8, 8) for im in pil)
    arr = pipe(class_labels=[0, 1], generator=gen(0), output_type="np").images
    assert arr.shape == (2, 8, 8, 3) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(class_labels=[0, 1], generator=gen(0), output_type="pt").images
    assert pt.shape == (2, 3, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    codes = pipe(class_labels=[0, 1], generator=gen(0), output_type="latent").images
    assert codes.shape == (2, 4, 4, 2) and codes.dtype == torch.long
    # pil and np agree
    np.testing.assert_allclose(np.asarray(pil[1]) / 255.0, arr[1], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    (tup,) = pipe(class_labels=[0, 1], generator=gen(0), output_type="latent", return_dict=False)
    assert torch.equal(tup, codes)


def test_seed_determinism(pipe):
    a = pipe(class_labels=[2, 2], generator=gen(3), output_type="latent").images
    b = pipe(class_labels=[2, 2], generator=gen(3), output_type="latent").images
    c = pipe(class_labels=[2, 2], generator=gen(4), output_type="latent").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_list_of_generators_gives_per_image_seeds(pipe):
    both = pipe(class_labels=[0, 1], generator=[gen(5), gen(6)], output_type="latent").images
    second = pipe(class_labels=[1], generator=[gen(6)], output_type="latent").images
    assert torch.equal(both[1:], second)
    with pytest.raises(ValueError, match="generator"):
        pipe(class_labels=[0, 1], generator=[gen(5)])


def test_class_names_resolve(pipe):
    assert pipe.get_label_ids(["Trouser", "trainer", "Sneaker"]) == [1, 2, 2]
    by_name = pipe(class_labels=["Sneaker", "Trouser"], generator=gen(1), output_type="latent").images
    by_id = pipe(class_labels=[2, 1], generator=gen(1), output_type="latent").images
    assert torch.equal(by_name, by_id)
    single = pipe(class_labels="Trouser", generator=gen(1), output_type="latent").images
    assert single.shape[0] == 1
    with pytest.raises(ValueError, match="Boot"):
        pipe.get_label_ids(["Boot"])


def test_guidance_runs_and_changes_samples(pipe):
    plain = pipe(class_labels=[0, 1], generator=gen(2), output_type="latent").images
    guided = pipe(class_labels=[0, 1], guidance_scale=4.0, generator=gen(2), output_type="latent").images
    assert guided.shape == plain.shape
    assert not torch.equal(plain, guided)
    ramped = pipe(class_labels=[0, 1], guidance_scale=4.0, guidance_schedule="linear", generator=gen(2),
                  output_type="latent").images
    direct = pipe.transformer.generate_codes(class_labels=torch.tensor([0, 1]), guidance_scale=4.0,
                                             guidance_schedule="linear", generator=gen(2))
    assert torch.equal(ramped, direct)


def test_unconditional_num_images(uncond_pipe):
    images = uncond_pipe(num_images=3, generator=gen(0), output_type="np").images
    assert images.shape == (3, 8, 8, 3)
    assert uncond_pipe(generator=gen(0), output_type="latent").images.shape[0] == 1


def test_completion_keeps_prefix_positions(pipe):
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    reference = pipe.vqvae.encode(pipe.image_processor.preprocess(image, height=8, width=8)).codes
    codes = pipe(
        class_labels=[0, 1], image=image, num_prefix_positions=6, generator=gen(0), output_type="latent"
    ).images
    flat, ref = codes.reshape(2, 16, 2), reference.reshape(1, 16, 2)
    assert torch.equal(flat[:, :6], ref.expand(2, -1, -1)[:, :6])


def test_progress_bar_and_step_callback(pipe, capsys):
    seen = []

    def callback(p, step, timestep, kwargs):
        assert p is pipe
        seen.append((step, kwargs["codes"].shape))
        return kwargs

    pipe.set_progress_bar_config(disable=True)
    pipe(class_labels=[0], generator=gen(0), output_type="latent", callback_on_step_end=callback)
    assert [s for s, _ in seen] == list(range(16))
    assert all(shape == (1, 4, 4, 2) for _, shape in seen)
    pipe.set_progress_bar_config(disable=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": [0], "output_type": "jpeg"}, "output_type"),
        ({"class_labels": [3]}, "class_labels"),
        ({"class_labels": None}, "class_labels"),
        ({"class_labels": [0], "num_images": 2}, "num_images"),
        ({"class_labels": [0], "num_prefix_positions": 3}, "num_prefix_positions"),
        ({"class_labels": [1.5]}, "class_labels"),
    ],
)
def test_bad_input(pipe, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**kwargs)


def test_unconditional_rejects_class_labels(uncond_pipe):
    with pytest.raises(ValueError, match="class_labels"):
        uncond_pipe(class_labels=[0])
    with pytest.raises(ValueError, match="num_images"):
        uncond_pipe(num_images=0)


def test_components_must_fit():
    with pytest.raises(ValueError, match="codebook_size"):
        RQTransformerPipeline(vqvae=tiny_vae(codebook_size=16), transformer=tiny_transformer())
    with pytest.raises(ValueError, match="code_depth"):
        RQTransformerPipeline(vqvae=tiny_vae(code_depth=3), transformer=tiny_transformer())
    with pytest.raises(ValueError, match="latent grid"):
        RQTransformerPipeline(vqvae=tiny_vae(sample_size=16), transformer=tiny_transformer())


def test_save_load_round_trip_both_loaders(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_rq_transformer", "RQTransformerPipeline"]
    for name in ("pipeline_rq_transformer.py", "vqvae/autoencoder_rqvae.py", "transformer/modeling_rq_transformer.py"):
        assert (path / name).is_file(), name
    expected = pipe(class_labels=[0, 2], generator=gen(7), output_type="np").images

    loaded = RQTransformerPipeline.from_pretrained(path)
    assert type(loaded) is RQTransformerPipeline and type(loaded.vqvae) is RQVAEModel
    assert loaded.id2label == NAMES
    np.testing.assert_array_equal(loaded(class_labels=[0, 2], generator=gen(7), output_type="np").images, expected)

    generic = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    assert type(generic).__name__ == "RQTransformerPipeline"
    np.testing.assert_array_equal(generic(class_labels=[0, 2], generator=gen(7), output_type="np").images, expected)


def test_saved_folder_loads_without_rq_hf_installed(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    expected = pipe(class_labels=["Trouser"], generator=gen(9), output_type="np").images
    call = 'class_labels=["Trouser"], generator=torch.Generator().manual_seed(9), output_type="np"'
    assert_pipeline_loads_without_rq_hf(path, call, expected, tmp_path)


def test_atomic_save_keeps_earlier_folder(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    (path / "checkpoint-10").mkdir()
    with mock.patch.object(RQTransformerPipeline, "_write_extra_files", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            pipe.save_pretrained(path)
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert (path / "checkpoint-10").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no staging folder left behind


def test_loading_incomplete_or_corrupt_folder_raises(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    weights = path / "vqvae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="(?i)safetensors|header|corrupt|deserializ"):
        RQTransformerPipeline.from_pretrained(path)
    weights.unlink()
    with pytest.raises(Exception, match="(?i)diffusion_pytorch_model|no file|not found|does not appear"):
        RQTransformerPipeline.from_pretrained(path)


def test_loading_mismatched_config_raises(pipe, tmp_path):
    path = tmp_path / "pipe"
    pipe.save_pretrained(path)
    config_path = path / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_size"] = 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(Exception, match="(?i)size|shape|mismatch"):
        RQTransformerPipeline.from_pretrained(path)


def test_model_card_and_push_to_hub(pipe, tmp_path):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return mock.Mock(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = sorted(
                os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in os.walk(folder_path) for f in fs
            )
            uploaded["card"] = open(os.path.join(folder_path, "README.md")).read()
            uploaded["ignore"] = kwargs.get("ignore_patterns")
            return "https://hub/commit"

    with mock.patch("rq_hf.models.hub_utils.HfApi", FakeApi):
        assert pipe.push_to_hub("me/tiny-rq", metrics={"PSNR (dB)": 21.5}) == "https://hub/commit"
    assert uploaded["repo_id"] == "me/tiny-rq"
    assert "model_index.json" in uploaded["files"] and "vqvae/diffusion_pytorch_model.safetensors" in uploaded["files"]
    assert "checkpoint-*" in uploaded["ignore"]
    card = uploaded["card"]
    for text in ("pipeline_tag: unconditional-image-generation", "library_name:", "rq-vae", "rq-transformer",
                 'RQTransformerPipeline.from_pretrained("me/tiny-rq")', "Sneaker, trainer", "PSNR (dB)", "21.5",
                 '"codebook_size": 32'):
        assert text in card, text


def test_to_dtype_keeps_quantizer_fp32(tmp_path):
    p = RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(num_classes=None))
    p.to(torch.bfloat16)
    assert p.transformer.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in p.vqvae.quantizer.buffers() if b.is_floating_point())
    images = p(num_images=2, generator=gen(0), output_type="np").images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()


def test_callback_on_step_end_contract_and_interrupt(pipe):
    pipe.set_progress_bar_config(disable=True)
    full = pipe(class_labels=[0], generator=gen(3), output_type="latent").images
    seen = []

    def stop_after_five(p, step, timestep, kwargs):
        seen.append(sorted(kwargs))
        p._interrupt = step == 5
        return {}

    stopped = pipe(class_labels=[0], generator=gen(3), output_type="latent", callback_on_step_end=stop_after_five,
                   callback_on_step_end_tensor_inputs=["codes"]).images
    assert seen == [["codes"]] * 6  # positions 0..5, then stopped
    flat, reference = stopped.reshape(16, 2), full.reshape(16, 2)
    assert torch.equal(flat[:6], reference[:6]) and not flat[6:].any()
    assert pipe.interrupt
    assert torch.equal(pipe(class_labels=[0], generator=gen(3), output_type="latent").images, full)  # reset

    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs.*'latents'"):
        pipe(class_labels=[0], callback_on_step_end=stop_after_five, callback_on_step_end_tensor_inputs=["latents"])
    with pytest.raises(TypeError, match="must return a dict.*NoneType"):
        pipe(class_labels=[0], callback_on_step_end=lambda *args: None)


def test_class_names_stay_on_the_pipeline(tmp_path):
    transformer = tiny_transformer()
    before = dict(transformer.config.id2label)
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=transformer, id2label=NAMES)
    assert transformer.config.id2label == before != NAMES  # the transformer's config is not changed
    assert pipe.id2label == NAMES and pipe.get_label_ids(["Trouser", "trainer"]) == [1, 2]
    pipe.save_pretrained(tmp_path)
    assert RQTransformerPipeline.from_pretrained(tmp_path).id2label == NAMES
    with pytest.raises(ValueError, match=r"`id2label` must name the classes 0..2, got ids \[0, 1\]"):
        RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(), id2label={0: "a", 1: "b"})
