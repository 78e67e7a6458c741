"""Configuration of the RQ-Transformer (stage 2 of "Autoregressive Image Generation using Residual
Quantization", Lee et al., CVPR 2022).

This file imports only `transformers` so that it can be copied next to the weights as flat remote code.
"""

from __future__ import annotations

from transformers import PreTrainedConfig


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(name: str, value: object) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")


def _check_positive_number(name: str, value: object) -> None:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


class RQTransformerConfig(PreTrainedConfig):
    r"""Configuration of [`RQTransformerForCausalImageModeling`].

    The model predicts the `h x w x D` residual codes of an RQ-VAE image autoregressively: a *spatial*
    transformer runs causally over the `h * w` positions (raster order) and a small *depth* transformer runs
    causally over the `D` codes of each position.

    Args:
        vocab_size (`int`, defaults to 16384):
            Size K of the RQ-VAE codebook; codes are integers in `[0, vocab_size)`.
        code_shape (`list[int]`, defaults to `[8, 8, 4]`):
            Shape `(h, w, D)` of the code map of one image: `h * w` spatial positions with `D` codes each.
        hidden_size (`int`, defaults to 512):
            Width of both transformers (the official code's `embed_dim`).
        num_spatial_layers (`int`, defaults to 12):
            Number of blocks of the spatial transformer (official `body.n_layer`).
        num_depth_layers (`int`, defaults to 2):
            Number of blocks of the depth transformer (official `head.n_layer`).
        num_attention_heads (`int`, defaults to 8):
            Attention heads of every block; must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Width of the MLP of every block; defaults to `4 * hidden_size`.
        resid_dropout (`float`, defaults to 0.1):
            Dropout after the attention output projection and after the MLP.
        attn_dropout (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        embd_dropout (`float`, defaults to 0.0):
            Dropout on the inputs of the spatial transformer.
        num_classes (`int`, *optional*):
            Number of classes of a class-conditional model; `None` for an unconditional model. A
            class-conditional model has one extra "null class" embedding with index `num_classes`, used by
            classifier-free guidance.
        class_dropout_prob (`float`, defaults to 0.0):
            During training, the probability with which a class label is replaced by the null class (needed to
            sample with classifier-free guidance). Only allowed for class-conditional models.
        code_embedding_dim (`int`, defaults to 256):
            Width of the code embedding table (the RQ-VAE codebook width, official `input_embed_dim`);
            the code embeddings are projected to `hidden_size` by one Linear for the spatial input and
            another one for the depth input.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the weights.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the LayerNorms.

    Class names of a class-conditional model live in the standard `id2label` / `label2id` maps (by default
    the class ids as strings); pipelines use them to turn names into labels.

    Example:

    ```python
    >>> from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling
    >>> config = RQTransformerConfig(vocab_size=256, code_shape=[4, 4, 2], hidden_size=64,
    ...                              num_spatial_layers=2, num_depth_layers=1, num_attention_heads=4,
    ...                              num_classes=10)
    >>> model = RQTransformerForCausalImageModeling(config)
    ```
    """

    model_type = "rq_transformer"

    vocab_size: int = 16384
    code_shape: list[int] | tuple[int, ...] = (8, 8, 4)
    hidden_size: int = 512
    num_spatial_layers: int = 12
    num_depth_layers: int = 2
    num_attention_heads: int = 8
    intermediate_size: int | None = None
    resid_dropout: float = 0.1
    attn_dropout: float = 0.0
    embd_dropout: float = 0.0
    num_classes: int | None = None
    class_dropout_prob: float = 0.0
    code_embedding_dim: int = 256
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs) -> None:
        self.code_shape = self._checked_code_shape(self.code_shape)
        for name in ("vocab_size", "hidden_size", "num_spatial_layers", "num_depth_layers",
                     "num_attention_heads", "code_embedding_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` must divide `hidden_size` ({self.hidden_size}), "
                f"got {self.num_attention_heads}."
            )
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        _check_positive_int("intermediate_size", self.intermediate_size)
        for name in ("resid_dropout", "attn_dropout", "embd_dropout", "class_dropout_prob"):
            _check_probability(name, getattr(self, name))
        if self.num_classes is not None:
            _check_positive_int("num_classes", self.num_classes)
        elif self.class_dropout_prob > 0:
            raise ValueError(
                "`class_dropout_prob` must be 0 for an unconditional model (`num_classes=None`), "
                f"got {self.class_dropout_prob}."
            )
        _check_positive_number("initializer_range", self.initializer_range)
        _check_positive_number("layer_norm_eps", self.layer_norm_eps)

        if self.num_classes is not None:
            if self.id2label is None:
                self.id2label = {i: str(i) for i in range(self.num_classes)}
            if len(self.id2label) != self.num_classes:
                raise ValueError(
                    f"`id2label` must have one entry per class ({self.num_classes}), "
                    f"got {len(self.id2label)} entries."
                )
            if self.label2id is None:
                self.label2id = {str(name): int(i) for i, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        if self.num_classes is None:
            # An unconditional model has no class names (the base class would invent two "LABEL_i").
            self.id2label = None
            self.label2id = None

    @staticmethod
    def _checked_code_shape(code_shape: object) -> list[int]:
        if not isinstance(code_shape, (list, tuple)) or len(code_shape) != 3 or any(
            isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in code_shape
        ):
            raise ValueError(
                f"`code_shape` must be three positive integers (h, w, D), got {code_shape!r}."
            )
        return [int(s) for s in code_shape]

    @property
    def num_positions(self) -> int:
        """Number `h * w` of spatial positions of one code map."""
        return self.code_shape[0] * self.code_shape[1]

    @property
    def code_depth(self) -> int:
        """Number `D` of residual codes per position."""
        return self.code_shape[2]


__all__ = ["RQTransformerConfig"]
