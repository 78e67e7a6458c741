"""RQ-VAE (Lee et al., CVPR 2022) as a diffusers model: encoder, residual quantizer, decoder."""

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .atomic_save import commit  # noqa: F401  (hub_utils needs the file; diffusers copies only direct imports)
from .hub_utils import RQHubMixin
from .residual_quantizer import ResidualQuantizer

#: How far input images may overshoot [-1, 1] (resampling) before they are refused as wrongly scaled.
_IMAGE_RANGE_SLACK = 0.5


@dataclass
class RQVAEEncoderOutput(BaseOutput):
    """Output of [`RQVAEModel.encode`].

    Args:
        latents (`torch.Tensor` of shape `(batch_size, vq_embed_dim, height, width)`):
            Output of `quant_conv`, before quantization.
        codes (`torch.LongTensor` of shape `(batch_size, height, width, code_depth)`): The residual codes.
    """

    latents: torch.Tensor = None
    codes: torch.LongTensor = None


@dataclass
class RQVAEOutput(BaseOutput):
    """Output of [`RQVAEModel.forward`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, H, W)`): The reconstruction.
        codes (`torch.LongTensor` of shape `(batch_size, h, w, code_depth)`): The residual codes.
        commitment_loss (`torch.Tensor`, scalar): Weighted commitment loss of the quantizer.
        codebook_usage (`torch.Tensor` of shape `(code_depth,)`): Fraction of the codes used in the batch.
        perplexity (`torch.Tensor` of shape `(code_depth,)`): Perplexity of the codes of the batch.
    """

    sample: torch.Tensor = None
    codes: torch.LongTensor = None
    commitment_loss: torch.Tensor = None
    codebook_usage: torch.Tensor = None
    perplexity: torch.Tensor = None


class RQVAEModel(RQHubMixin, ModelMixin, ConfigMixin):
    r"""RQ-VAE: a convolutional autoencoder whose latents are quantized into a stack of `code_depth` codes.

    The encoder/decoder are diffusers' `Encoder` / `Decoder` (`models.autoencoders.vae`, `double_z=False`), so
    the official 256px RQ-VAE (6 levels, channels `128 * (1, 1, 2, 2, 4, 4)`, attention at the 8x8 level via
    `AttnDownEncoderBlock2D` / `AttnUpDecoderBlock2D` and in the mid blocks, 8x8x256 latents) is expressible
    as a config. The codebooks live in a [`ResidualQuantizer`] kept in fp32.

    Parameters:
        in_channels (`int`, defaults to 3): Channels of the input image.
        out_channels (`int`, defaults to 3): Channels of the reconstruction.
        down_block_types (`tuple[str]`): Encoder blocks, one per level (`"DownEncoderBlock2D"` or
            `"AttnDownEncoderBlock2D"`).
        up_block_types (`tuple[str]`): Decoder blocks, one per level (`"UpDecoderBlock2D"` or
            `"AttnUpDecoderBlock2D"`), from the lowest resolution up.
        block_out_channels (`tuple[int]`): Channels per level; the down-sampling factor is
            `2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, defaults to 2): ResNet layers per encoder block (decoder: one more).
        act_fn (`str`, defaults to `"silu"`): Activation function.
        latent_channels (`int`, defaults to 64): Channels of the encoder output / decoder input.
        norm_num_groups (`int`, defaults to 32): Groups of the group normalisations.
        sample_size (`int`, defaults to 32): Nominal image size (informational, as in `VQModel`).
        vq_embed_dim (`int`, *optional*): Dimension of the quantized vectors; defaults to `latent_channels`.
        mid_block_add_attention (`bool`, defaults to `True`): Attention in the encoder/decoder mid blocks.
        codebook_size (`int`, defaults to 512): Codes per codebook.
        code_depth (`int`, defaults to 4): Residual depth D (codes per position).
        shared_codebook (`bool`, defaults to `True`): One codebook for all depths.
        ema_decay (`float`, defaults to 0.99): Decay of the EMA codebook update.
        restart_unused_codes (`bool`, defaults to `True`): Restart codes with a low EMA count.
        commitment_weight (`float`, defaults to 0.25): Weight beta of the commitment loss.
        restart_threshold (`float`, defaults to 1.0): EMA count below which a code is restarted.
        kmeans_init (`bool`, defaults to `False`): k-means initialisation of the codebooks on the first batch.
    """

    _supports_gradient_checkpointing = True
    _expected_config = (
        "_class_name",
        "RQVAEModel",
        "Load a transformer folder with RQTransformerForCausalImageModeling.from_pretrained, a pipeline folder "
        "with RQTransformerPipeline.from_pretrained (or pass subfolder='vqvae').",
    )
    _keep_in_fp32_modules = ["quantizer"]
    _skip_layerwise_casting_patterns = ["quantizer"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Tuple[str, ...] = (
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
        ),
        up_block_types: Tuple[str, ...] = ("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels: Tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 64,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        vq_embed_dim: Optional[int] = None,
        mid_block_add_attention: bool = True,
        codebook_size: int = 512,
        code_depth: int = 4,
        shared_codebook: bool = True,
        ema_decay: float = 0.99,
        restart_unused_codes: bool = True,
        commitment_weight: float = 0.25,
        restart_threshold: float = 1.0,
        kmeans_init: bool = False,
    ):
        super().__init__()
        if not (len(down_block_types) == len(up_block_types) == len(block_out_channels)):
            raise ValueError(
                "`down_block_types`, `up_block_types` and `block_out_channels` must have the same length, "
                "got "
                f"{len(down_block_types)}, {len(up_block_types)} and {len(block_out_channels)}."
            )
        vq_embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=tuple(down_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            double_z=False,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantizer = ResidualQuantizer(
            codebook_size=codebook_size,
            code_depth=code_depth,
            dim=vq_embed_dim,
            shared_codebook=shared_codebook,
            ema_decay=ema_decay,
            restart_unused_codes=restart_unused_codes,
            commitment_weight=commitment_weight,
            restart_threshold=restart_threshold,
            kmeans_init=kmeans_init,
        )
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )

    # ------------------------------------------------------------------ shapes and checks
    @property
    def downsample_factor(self) -> int:
        """Ratio between image and code-map sizes: `2 ** (len(block_out_channels) - 1)`."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def _vq_embed_dim(self) -> int:
        return self.quantizer.dim

    def code_shape_for(self, height: int, width: int) -> Tuple[int, int, int]:
        """Shape `(h, w, code_depth)` of the codes of a `height` x `width` image."""
        f = self.downsample_factor
        for name, value in (("height", height), ("width", width)):
            if value % f != 0 or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive multiple of the down-sampling factor {f}, got {value}."
                )
        return height // f, width // f, self.config.code_depth

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> Union[RQVAEEncoderOutput, Tuple[torch.Tensor]]:
        """Encode images `x` (B, in_channels, H, W) in [-1, 1] into latents and residual codes.

        The codebooks are never updated here, also in training mode.
        """
        self._check_images(x, "x")
        latents = self._latents(x)
        if not torch.isfinite(latents).all():
            raise ValueError(
                "the encoder produced non-finite latents from finite images `x`: the weights are not finite "
                "(a diverged training?) or the dtype overflows."
            )
        codes = self.quantizer(latents.permute(0, 2, 3, 1), update_codebook=False).codes
        if not return_dict:
            return (latents, codes)
        return RQVAEEncoderOutput(latents=latents, codes=codes)

    @apply_forward_hook
    def decode(
        self, latents: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True
    ) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """Quantize `latents` (B, vq_embed_dim, h, w) (unless `force_not_quantize`), then decode to images."""
        self._check_latents(latents)
        if not force_not_quantize:
            quantized = self.quantizer(latents.permute(0, 2, 3, 1), update_codebook=False).quantized
            latents = quantized.permute(0, 3, 1, 2)
        sample = self._decode_quantized(latents)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    @apply_forward_hook
    def decode_codes(
        self, codes: torch.Tensor, return_dict: bool = True
    ) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """Decode codes `(B, h, w, d)` with `1 <= d <= code_depth` (fewer depths: coarser images)."""
        if isinstance(codes, torch.Tensor) and codes.ndim != 4:
            raise ValueError(f"`codes` must have shape (B, h, w, d), got shape {tuple(codes.shape)}.")
        if isinstance(codes, torch.Tensor) and codes.shape[0] == 0:
            raise ValueError(f"`codes` must hold at least one code map, got shape {tuple(codes.shape)}.")
        quantized = self.quantizer.embed_codes(codes)  # checks dtype, depth and range
        sample = self._decode_quantized(quantized.permute(0, 3, 1, 2))
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def forward(
        self, sample: torch.Tensor, return_dict: bool = True
    ) -> Union[RQVAEOutput, Tuple[torch.Tensor, ...]]:
        """Reconstruct `sample` (B, in_channels, H, W) in [-1, 1]; in training mode, update the codebooks.

        Returns:
            [`RQVAEOutput`] with the reconstruction, codes, commitment loss and codebook statistics.
        """
        # In training, non-finite values are kept out of the codebook by the quantizer; the loss shows them.
        self._check_images(sample, allow_non_finite=self.training)
        latents = self._latents(sample)
        quantizer_output = self.quantizer(latents.permute(0, 2, 3, 1))
        reconstruction = self._decode_quantized(quantizer_output.quantized.permute(0, 3, 1, 2))
        output = RQVAEOutput(
            sample=reconstruction,
            codes=quantizer_output.codes,
            commitment_loss=quantizer_output.commitment_loss,
            codebook_usage=quantizer_output.codebook_usage,
            perplexity=quantizer_output.perplexity,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ guards and internals

    def _check_images(self, sample: torch.Tensor, name: str = "sample", allow_non_finite: bool = False) -> None:
        """Type, shape, batch, finiteness and range (`[-1, 1]` up to `_IMAGE_RANGE_SLACK`) of input images."""
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(sample).__name__}.")
        if not sample.is_floating_point():
            raise TypeError(
                f"`{name}` must be a floating point tensor with values in [-1, 1], got dtype {sample.dtype}."
            )
        if sample.ndim != 4:
            raise ValueError(f"`{name}` must have shape (B, C, H, W), got shape {tuple(sample.shape)}.")
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`{name}` must have in_channels={self.config.in_channels} channels, got {sample.shape[1]} "
                f"(shape {tuple(sample.shape)})."
            )
        f = self.downsample_factor
        if sample.shape[2] % f or sample.shape[3] % f:
            raise ValueError(
                f"`{name}` height and width must be multiples of the down-sampling factor {f}, "
                f"got {sample.shape[2]}x{sample.shape[3]}."
            )
        if sample.shape[0] == 0:
            raise ValueError(f"`{name}` must hold at least one image, got shape {tuple(sample.shape)}.")
        low, high = (float(v) for v in torch.aminmax(sample.detach()))  # NaN if any value is NaN
        if not (math.isfinite(low) and math.isfinite(high)):
            if allow_non_finite:
                return
            count = int((~torch.isfinite(sample)).sum())
            raise ValueError(f"`{name}` must be finite, got {count} NaN/inf values (shape {tuple(sample.shape)}).")
        if low < -1 - _IMAGE_RANGE_SLACK or high > 1 + _IMAGE_RANGE_SLACK:
            raise ValueError(
                f"`{name}` must hold values in [-1, 1] (e.g. uint8 pixels / 127.5 - 1), got values in "
                f"[{low:.4g}, {high:.4g}]."
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
        if not latents.is_floating_point():
            raise TypeError(f"`latents` must be a floating point tensor, got dtype {latents.dtype}.")
        if latents.ndim != 4 or latents.shape[1] != self._vq_embed_dim:
            raise ValueError(
                f"`latents` must have shape (B, vq_embed_dim={self._vq_embed_dim}, h, w), "
                f"got shape {tuple(latents.shape)}."
            )

    # ------------------------------------------------------------------ building blocks
    def _latents(self, sample: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(sample))

    def _decode_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        quantized = quantized.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(quantized))

    # ------------------------------------------------------------------ public API
