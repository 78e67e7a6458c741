"""Tiny RQ-VAE and RQ-Transformer builders shared by the tests (seconds on a CPU)."""

import torch

from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQVAEModel


def tiny_vae(codebook_size=32, code_depth=2, sample_size=8, in_channels=3):
    torch.manual_seed(0)
    return RQVAEModel(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=8,
        norm_num_groups=4,
        sample_size=sample_size,
        codebook_size=codebook_size,
        code_depth=code_depth,
    ).eval()


def tiny_transformer(num_classes=3, code_shape=(4, 4, 2), vocab_size=32, id2label=None, seed=1, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=vocab_size,
        code_shape=list(code_shape),
        hidden_size=16,
        num_spatial_layers=1,
        num_depth_layers=1,
        num_attention_heads=2,
        num_classes=num_classes,
        resid_dropout=0.0,
        id2label=id2label,
    )
    model = RQTransformerForCausalImageModeling(RQTransformerConfig(**{**kwargs, **overrides})).eval()
    with torch.no_grad():  # make the condition matter in an untrained model
        if model.config.condition_type != "none":
            model.condition_embedding.weight.normal_(0, 1)
    return model


def tiny_pipeline(num_classes=3, head_scale=30.0):
    """A tiny class-conditional (cat, dog, owl) or unconditional pipeline of 8x8 RGB images, 4x4x2 codes.

    The untrained output head is scaled by `head_scale` so that its logits are far from uniform: samples then
    depend on the class and the seed instead of on the random numbers alone.
    """
    from rq_hf import RQTransformerPipeline

    transformer = tiny_transformer(num_classes=num_classes)
    with torch.no_grad():
        transformer.output_proj.weight.mul_(head_scale)
    id2label = {0: "cat", 1: "dog", 2: "owl"} if num_classes == 3 else None
    pipe = RQTransformerPipeline(vqvae=tiny_vae(), transformer=transformer, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CAPTIONS = [
    f"a {colour} {shape} on the {side}"
    for colour in ("red", "green", "blue")
    for shape in ("circle", "square")
    for side in ("left", "right")
]


def tiny_caption_tokenizer(max_text_length=6):
    from rq_hf.models.tokenization_rq_transformer import train_caption_tokenizer

    return train_caption_tokenizer(CAPTIONS * 3, vocab_size=64, max_text_length=max_text_length)


def tiny_text_transformer(text_vocab_size=64, max_text_length=6, **overrides):
    overrides = {"caption_dropout_prob": 0.1, **overrides}
    return tiny_transformer(
        num_classes=None, text_vocab_size=text_vocab_size, max_text_length=max_text_length, seed=2, **overrides
    )
