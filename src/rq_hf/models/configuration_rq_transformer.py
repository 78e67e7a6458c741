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


#: The sizes a model gets when they are built unset (the paper's ImageNet 256px setting).
_PAPER_SIZES = {"vocab_size": 16384, "code_shape": (8, 8, 4), "code_embedding_dim": 256}


class RQTransformerConfig(PreTrainedConfig):
    r"""Configuration of [`RQTransformerForCausalImageModeling`].

    The model predicts the `h x w x D` residual codes of an RQ-VAE image autoregressively: a *spatial*
    transformer runs causally over the `h * w` positions (raster order) and a small *depth* transformer runs
    causally over the `D` codes of each position.

    The condition (`condition_type`) is one of:

    - `"none"`: unconditional; a learned start token stands before the image positions;
    - `"class"` (`num_classes` set): a class embedding stands there, plus a null class for guidance;
    - `"text"` (`text_vocab_size` set): a prefix of `max_text_length` caption tokens (ids of a tokenizer,
      padded with `text_pad_token_id`) with their own embedding table and positions stands there, as in the
      official CC-3M models; the prefix positions also predict the next caption token (an auxiliary text loss
      weighted by `text_loss_weight`, the image loss by `image_loss_weight`).

    The sizes the RQ-VAE decides (`vocab_size`, `code_shape`, `code_embedding_dim`) may be left unset: they are
    filled from the RQ-VAE when a transformer is built for one ([`~RQTransformerConfig.fill_from_vqvae`], which
    `examples/train_rq_transformer.py` calls); a model built while they are unset takes the paper's sizes
    (16384, `[8, 8, 4]`, 256).

    Args:
        vocab_size (`int`, *optional*):
            Size K of the RQ-VAE codebook; codes are integers in `[0, vocab_size)`.
        code_shape (`list[int]`, *optional*):
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
        text_vocab_size (`int`, *optional*):
            Size of the caption tokenizer's vocabulary of a text-conditional model (official `vocab_size_cond`);
            `None` for unconditional and class-conditional models. Exclusive with `num_classes`.
        max_text_length (`int`, defaults to 32):
            Number of caption tokens of a text-conditional model (official `block_size_cond`): captions are
            padded or truncated to it. Only used by text-conditional models.
        text_pad_token_id (`int`, defaults to 0):
            Id of the padding token (`[PAD]`, id 0 in the official tokenizer). A caption of padding tokens
            only is the empty caption: caption dropout trains it, and it is the unconditional branch of
            classifier-free guidance when no negative prompt is given.
        text_loss_weight (`float`, defaults to 0.1):
            Weight of the caption-token cross-entropy in the loss of a text-conditional model (official
            `txt_weight`).
        image_loss_weight (`float`, defaults to 0.9):
            Weight of the code cross-entropy in the loss of a text-conditional model (official `img_weight`);
            the loss of other models is the code cross-entropy alone.
        caption_dropout_prob (`float`, defaults to 0.0):
            During training, the probability with which a caption is replaced by the empty caption (needed to
            sample with classifier-free guidance; the official text models were trained without it). Only
            allowed for text-conditional models.
        code_embedding_dim (`int`, *optional*):
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
    >>> text_config = RQTransformerConfig(vocab_size=256, code_shape=[4, 4, 2], hidden_size=64,
    ...                                   num_spatial_layers=2, num_depth_layers=1, num_attention_heads=4,
    ...                                   text_vocab_size=1000, max_text_length=16, caption_dropout_prob=0.1)
    >>> text_config.condition_type
    'text'
    ```
    """

    model_type = "rq_transformer"

    vocab_size: int | None = None
    code_shape: list[int] | tuple[int, ...] | None = None
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
    text_vocab_size: int | None = None
    max_text_length: int = 32
    text_pad_token_id: int = 0
    text_loss_weight: float = 0.1
    image_loss_weight: float = 0.9
    caption_dropout_prob: float = 0.0
    code_embedding_dim: int | None = None
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs) -> None:
        if self.code_shape is not None:
            self.code_shape = self._checked_code_shape(self.code_shape)
        for name in ("vocab_size", "code_embedding_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("hidden_size", "num_spatial_layers", "num_depth_layers", "num_attention_heads"):
            _check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` must divide `hidden_size` ({self.hidden_size}), "
                f"got {self.num_attention_heads}."
            )
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        _check_positive_int("intermediate_size", self.intermediate_size)
        for name in ("resid_dropout", "attn_dropout", "embd_dropout", "class_dropout_prob", "caption_dropout_prob"):
            _check_probability(name, getattr(self, name))
        if self.num_classes is not None:
            _check_positive_int("num_classes", self.num_classes)
        elif self.class_dropout_prob > 0:
            raise ValueError(
                "`class_dropout_prob` must be 0 for a model without classes (`num_classes=None`), "
                f"got {self.class_dropout_prob}."
            )
        self._check_text_fields()
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

    def _check_text_fields(self) -> None:
        _check_positive_int("max_text_length", self.max_text_length)
        if isinstance(self.text_pad_token_id, bool) or not isinstance(self.text_pad_token_id, int) or (
            self.text_pad_token_id < 0
        ):
            raise ValueError(f"`text_pad_token_id` must be an integer >= 0, got {self.text_pad_token_id!r}.")
        if not _is_number(self.text_loss_weight) or self.text_loss_weight < 0:
            raise ValueError(f"`text_loss_weight` must be a number >= 0, got {self.text_loss_weight!r}.")
        _check_positive_number("image_loss_weight", self.image_loss_weight)
        if self.text_vocab_size is None:
            if self.caption_dropout_prob > 0:
                raise ValueError(
                    "`caption_dropout_prob` must be 0 for a model without text (`text_vocab_size=None`), "
                    f"got {self.caption_dropout_prob}."
                )
            return
        _check_positive_int("text_vocab_size", self.text_vocab_size)
        if self.num_classes is not None:
            raise ValueError(
                "`num_classes` must be None for a text-conditional model (`text_vocab_size` "
                f"{self.text_vocab_size}): the condition is a class or a caption, got num_classes={self.num_classes}."
            )
        if self.text_pad_token_id >= self.text_vocab_size:
            raise ValueError(
                f"`text_pad_token_id` must lie in [0, text_vocab_size={self.text_vocab_size}), "
                f"got {self.text_pad_token_id}."
            )

    @staticmethod
    def _checked_code_shape(code_shape: object) -> list[int]:
        if not isinstance(code_shape, (list, tuple)) or len(code_shape) != 3 or any(
            isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in code_shape
        ):
            raise ValueError(
                f"`code_shape` must be three positive integers (h, w, D), got {code_shape!r}."
            )
        return [int(s) for s in code_shape]

    def fill_from_vqvae(self, vqvae, code_shape: list[int] | tuple[int, ...] | None = None) -> None:
        """Set the unset sizes that the RQ-VAE `vqvae` decides; a set one that disagrees raises `ValueError`.

        Args:
            vqvae ([`RQVAEModel`]):
                The RQ-VAE whose codes the transformer models: `vocab_size` is its codebook size and
                `code_embedding_dim` the width of its codebook vectors.
            code_shape (`list[int]`, *optional*):
                The `(h, w, D)` code map of the training images (`vqvae.code_shape_for(height, width)`); by default
                that of `vqvae.config.sample_size`.
        """
        if code_shape is None:
            code_shape = vqvae.code_shape_for(vqvae.config.sample_size, vqvae.config.sample_size)
        derived = {
            "vocab_size": vqvae.config.codebook_size,
            "code_embedding_dim": vqvae.quantizer.dim,
            "code_shape": self._checked_code_shape(list(code_shape)),
        }
        for name, value in derived.items():
            current = getattr(self, name)
            if current is not None and current != value:
                raise ValueError(
                    f"`{name}` must be unset (taken from the RQ-VAE) or equal the RQ-VAE's, got {name}={current} "
                    f"where the RQ-VAE needs {name}={value}."
                )
            setattr(self, name, value)

    def fill_unset_sizes(self) -> None:
        """Give the sizes still unset the paper's values (what a model built without an RQ-VAE gets)."""
        for name, value in _PAPER_SIZES.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, tuple) else value)

    @property
    def num_positions(self) -> int:
        """Number `h * w` of spatial positions of one code map."""
        return self.code_shape[0] * self.code_shape[1]

    @property
    def condition_type(self) -> str:
        """`"text"` (`text_vocab_size` set), `"class"` (`num_classes` set) or `"none"` (unconditional)."""
        if self.text_vocab_size is not None:
            return "text"
        return "none" if self.num_classes is None else "class"

    @property
    def condition_length(self) -> int:
        """Number of condition tokens ahead of the image positions: `max_text_length` for text, else 1."""
        return self.max_text_length if self.text_vocab_size is not None else 1

    @property
    def code_depth(self) -> int:
        """Number `D` of residual codes per position."""
        return self.code_shape[2]


__all__ = ["RQTransformerConfig"]
