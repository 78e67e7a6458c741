import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput

from rq_hf import ResidualQuantizer, RQVAEModel
from rq_hf.models.autoencoder_rqvae import RQVAEEncoderOutput, RQVAEOutput

TINY = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=8,
    vq_embed_dim=6,
    codebook_size=32,
    code_depth=3,
)


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return RQVAEModel(**{**TINY, **kwargs})


def images(batch=2, size=8, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_and_outputs():
    model = tiny_model().eval()
    assert isinstance(model.quantizer, ResidualQuantizer)
    assert model.downsample_factor == 2 and model.code_shape_for(8, 12) == (4, 6, 3)
    x = images()
    encoded = model.encode(x)
    assert isinstance(encoded, RQVAEEncoderOutput)
    assert encoded.latents.shape == (2, 6, 4, 4)
    assert encoded.codes.shape == (2, 4, 4, 3) and encoded.codes.dtype == torch.long
    out = model(x)
    assert isinstance(out, RQVAEOutput)
    assert out.sample.shape == x.shape and torch.equal(out.codes, encoded.codes)
    assert out.commitment_loss.ndim == 0 and out.codebook_usage.shape == (3,) and out.perplexity.shape == (3,)
    assert len(model(x, return_dict=False)) == 5


def test_decode_paths_agree():
    model = tiny_model().eval()
    encoded = model.encode(images())
    from_codes = model.decode_codes(encoded.codes)
    assert isinstance(from_codes, DecoderOutput)
    from_latents = model.decode(encoded.latents).sample
    assert torch.allclose(from_codes.sample, from_latents, atol=1e-5)
    assert torch.allclose(model(images()).sample, from_latents, atol=1e-5)
    unquantized = model.decode(encoded.latents, force_not_quantize=True).sample
    assert not torch.allclose(unquantized, from_latents)
    # fewer depths: coarse-to-fine reconstruction
    coarse = model.decode_codes(encoded.codes[..., :1]).sample
    assert coarse.shape == from_latents.shape and not torch.allclose(coarse, from_latents)
    manual = model.decoder(
        model.post_quant_conv(model.quantizer.codebook(0)[encoded.codes[..., 0]].permute(0, 3, 1, 2))
    )
    assert torch.allclose(coarse, manual, atol=1e-5)


def test_straight_through_gradient_reaches_encoder():
    model = tiny_model().train()
    x = images()
    out = model(x)
    (F.mse_loss(out.sample, x) + out.commitment_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_codebook_moves_only_in_training_forward():
    model = tiny_model()
    before = model.quantizer.embed.clone()
    model.eval()(images())
    model.train()
    model.encode(images())
    model.decode(model.encode(images()).latents)
    assert torch.equal(model.quantizer.embed, before)
    model(images())
    assert not torch.equal(model.quantizer.embed, before)


def test_training_reduces_reconstruction_loss():
    model = tiny_model().train()
    x = images(batch=4, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(x)
        loss = F.mse_loss(out.sample, x) + out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_gradient_checkpointing_gives_same_gradients():
    x = images()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        model.quantizer.eval()  # keep the codebook fixed so both runs see the same one
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
        out = model(x)
        F.mse_loss(out.sample, x).backward()
        grads.append(model.encoder.conv_in.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = tiny_model().train()
    model(images(seed=3))  # move the codebook and its EMA state away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = RQVAEModel.from_pretrained(tmp_path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = images(seed=4)
    codes = model.encode(x).codes
    assert torch.equal(loaded.encode(x).codes, codes)
    assert torch.equal(loaded.decode_codes(codes).sample, model.decode_codes(codes).sample)
    assert torch.equal(loaded(x).sample, model(x).sample)


def test_half_precision_load_keeps_quantizer_fp32(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    half = RQVAEModel.from_pretrained(tmp_path, dtype=torch.float16)
    assert half.encoder.conv_in.weight.dtype == torch.float16
    for name, buffer in half.quantizer.named_buffers():
        assert buffer.dtype in (torch.float32, torch.bool), name
    assert torch.equal(half.quantizer.embed, model.quantizer.embed)
    codes = model.encode(images()).codes
    assert half.decode_codes(codes).sample.dtype == torch.float16


def test_official_256px_architecture_fits():
    config = dict(
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 5 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 5,
        layers_per_block=2,
        latent_channels=256,
        codebook_size=16384,
        code_depth=4,
    )
    with torch.device("meta"):
        model = RQVAEModel(**config)
    assert model.downsample_factor == 32 and model.code_shape_for(256, 256) == (8, 8, 4)
    assert model.quantizer.dim == 256 and model.quantizer.codebook(0).shape == (16384, 256)
    assert (
        model.encoder.down_blocks[-1].attentions is not None
        and model.encoder.mid_block.attentions[0] is not None
    )
    assert model.decoder.up_blocks[0].attentions is not None
    assert model.quant_conv.kernel_size == (1, 1) and model.post_quant_conv.kernel_size == (1, 1)


def test_bad_inputs():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"x.*multiples of the down-sampling factor 2.*9x8"):
        model.encode(torch.zeros(1, 3, 9, 8))
    with pytest.raises(ValueError, match=r"sample.*in_channels=3.*got 1"):
        model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match="sample.*floating point.*torch.uint8"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes.*\[0, codebook_size=32\).*\[32, 32\]"):
        model.decode_codes(torch.full((1, 2, 2, 3), 32))
    with pytest.raises(ValueError, match=r"codes.*code_depth=3.*\(1, 2, 2, 4\)"):
        model.decode_codes(torch.zeros(1, 2, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes.*\(B, h, w, d\).*\(2, 3\)"):
        model.decode_codes(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="codes.*integer.*torch.float32"):
        model.decode_codes(torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"latents.*vq_embed_dim=6.*\(1, 5, 2, 2\)"):
        model.decode(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"height.*factor 2.*7"):
        model.code_shape_for(7, 8)
    with pytest.raises(ValueError, match="same length"):
        RQVAEModel(**{**TINY, "block_out_channels": (8, 16, 16)})
