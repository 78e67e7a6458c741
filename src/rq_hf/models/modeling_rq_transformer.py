"""RQ-Transformer: stage 2 of "Autoregressive Image Generation using Residual Quantization" (Lee et al.,
CVPR 2022, arXiv 2203.01941), as a transformers `PreTrainedModel`.

An image is an RQ-VAE code map of shape (h, w, D): T = h * w positions in raster order, D residual codes per
position. Two causal transformers model it:

* the *spatial* transformer runs over L condition tokens followed by the T positions. The condition tokens
  are `condition_embedding(c_i) + condition_position_embedding[i]`: one class embedding (L = 1), one learned
  start token for unconditional models (L = 1), or the L = `max_text_length` token ids of a caption for
  text-conditional models. Image position t > 0 enters as
  `sum_d spatial_input_proj(e(S[t-1, d])) + spatial_position_embedding[t-1]`; the output h_t at the input
  just before position t (the last condition token for t = 0) summarises the condition and everything
  before position t. A text model's outputs at condition tokens 0..L-2 also predict the next caption token
  through `text_output_norm` + `text_output_proj` (an auxiliary loss, official `cond_classifier`);
* the *depth* transformer runs over the D codes of one position. Its input at depth 0 is
  `h_t + depth_position_embedding[0]` and at depth d > 0
  `depth_input_proj(sum_{d' < d} e(S[t, d'])) + depth_position_embedding[d]`; its output at depth d
  predicts S[t, d] through one head (LayerNorm + Linear to K) shared by all depths.

The structure is that of the official code (kakaobrain/rq-vae-transformer,
`rqvae/models/rqtransformer`, configs with `input_emb_vqvae`, `head_emb_vqvae`, `cumsum_depth_ctx`,
`shared_tok_emb` and `shared_cls_emb` set, as in all released checkpoints): same modules, same math
(pre-LayerNorm blocks, exact GELU, no final LayerNorm inside the stacks, embedding dropout on the spatial
input only), so official weights convert by renaming. Official name -> name here:

=====================================================  ==================================================
official (stage 2 `state_dict`)                        here
=====================================================  ==================================================
stage 1 `quantizer.codebooks.0.weight[:K]`             `code_embeddings.weight` (K, E)
`input_mlp.{weight,bias}`                              `spatial_input_proj.{weight,bias}` (C, E)
`head_mlp.{weight,bias}`                               `depth_input_proj.{weight,bias}` (C, E)
`cond_emb.weight`                                      `condition_embedding.weight` (1 or N + 1, C)
`pos_emb_cond`                                         `condition_position_embedding` (1, L, C)
`pos_emb_hw`                                           `spatial_position_embedding` (1, h*w, C)
`pos_emb_d`                                            `depth_position_embedding` (1, D, C)
`body_transformer.blocks.{i}.X`                        `spatial_transformer.layers.{i}.X'`
`head_transformer.blocks.{i}.X`                        `depth_transformer.layers.{i}.X'`
  X = `ln1.*`, `ln2.*`                                 X' = `ln_1.*`, `ln_2.*`
  X = `attn.{query,key,value}.*`                       X' = `attn.{query,key,value}.*`
  X = `attn.proj.*`                                    X' = `attn.out_proj.*`
  X = `mlp.0.*`, `mlp.2.*`                             X' = `mlp.fc_in.*`, `mlp.fc_out.*`
`classifier.layer_norm.{weight,bias}`                  `output_norm.{weight,bias}`
`classifier.linear.{weight,bias}`                      `output_proj.{weight,bias}` (K, C)
`cond_classifier.layer_norm.{weight,bias}` (text)      `text_output_norm.{weight,bias}`
`cond_classifier.linear.{weight,bias}` (text)          `text_output_proj.{weight,bias}` (V, C)
=====================================================  ==================================================

Two things are not a pure rename:

* the official model has no code table of its own; it embeds codes with the frozen RQ-VAE codebook
  (`model_aux`). Here the table is `code_embeddings` (fill it from the stage-1 codebook without its
  padding row, e.g. with [`RQTransformerForCausalImageModeling.init_code_embeddings`]);
* a class-conditional model here has `num_classes + 1` condition embeddings: the last one is the null class
  of classifier-free guidance. Official ImageNet checkpoints (`vocab_size_cond: 1000`) were trained without
  class dropout, so the converter appends one row (e.g. the mean class embedding) and guidance with such a
  model is only an approximation. Unconditional models (`vocab_size_cond: 1`) and text models
  (`vocab_size_cond` = V text tokens, `block_size_cond` = L > 1) map one to one; the official text models
  were trained without caption dropout, so guidance with them (the empty caption as the unconditional
  branch) is an approximation too.

Initialisation follows the official `Stage2Model._init_weights` (normal(0, initializer_range) for Linear
and Embedding weights and the position embeddings, zero biases, unit LayerNorms).

This file imports only torch, transformers and its sibling configuration file so that it can be copied next
to the weights as flat remote code.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, StaticLayer
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import ModelOutput

from .checks import GUIDANCE_SCHEDULES, check_choice, check_generator, check_int, check_sampling_args
from .configuration_rq_transformer import RQTransformerConfig
from .hub_utils import RQHubMixin


@dataclass
class RQTransformerOutput(ModelOutput):
    """Output of [`RQTransformerForCausalImageModeling`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Returned when `labels` are given: the mean cross-entropy over all `h * w * D` codes; for a
            text-conditional model `text_loss_weight * text_loss + image_loss_weight * image_loss`.
        logits (`torch.FloatTensor` of shape `(batch, h, w, D, vocab_size)`):
            Unnormalised scores of every code given all codes before it (raster order, then depth).
        text_logits (`torch.FloatTensor` of shape `(batch, max_text_length - 1, text_vocab_size)`, *optional*):
            Text-conditional models: scores of caption tokens 1..L-1, each given the tokens before it.
        image_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Text-conditional models, with `labels`: the mean code cross-entropy.
        text_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Text-conditional models, with `labels`: the mean cross-entropy of caption tokens 1..L-1 (padding
            included, as in the official code) of the captions the model was given (after caption dropout).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None


class RQKeyValueCache:
    """Preallocated key/value cache of one transformer stack.

    Keys and values of layer `i` live in one `(batch, heads, max_length, head_dim)` buffer allocated at the
    first update (with the dtype and device of the keys, so it follows autocast); `length` counts the tokens
    already stored. The stack advances `length` after all its layers have seen the new tokens. `reset()` makes
    the cache empty again without freeing the buffers (the depth cache is reused at every position).
    """

    def __init__(self, num_layers: int, max_length: int) -> None:
        self.max_length = max_length
        self.length = 0
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` (batch, heads, new, head_dim) of one layer; return all keys/values so far."""
        if self.keys[layer_idx] is None:
            shape = (key.shape[0], key.shape[1], self.max_length, key.shape[3])
            self.keys[layer_idx] = key.new_empty(shape)
            self.values[layer_idx] = value.new_empty(shape)
        end = self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"`RQKeyValueCache` holds at most {self.max_length} tokens, got {end}.")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, self.length:end] = key
        values[:, :, self.length:end] = value
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Mark `num_tokens` more tokens as stored (called once per stack forward)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget the stored tokens; the buffers are kept for reuse."""
        self.length = 0


def _in_eval_mode(method: Callable) -> Callable:
    """Run `method` with every submodule in eval mode (no dropout), then restore each module's own mode."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            return method(self, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    return wrapper


class RQTransformerAttention(nn.Module):
    """Causal multi-head self-attention (official `MultiSelfAttention`) through SDPA."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(
        self, hidden_states: torch.Tensor, cache: RQKeyValueCache | Cache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        split = (batch, length, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(split).transpose(1, 2)
        key = self.key(hidden_states).view(split).transpose(1, 2)
        value = self.value(hidden_states).view(split).transpose(1, 2)
        past, mask = 0, None
        if isinstance(cache, Cache):  # static cache: full-length buffers, the stored length is a tensor
            key, value = cache.update(key, value, layer_idx)
            end = cache.layers[layer_idx].cumulative_length
            positions = end - length + torch.arange(length, device=query.device)
            mask = torch.arange(key.shape[2], device=query.device) <= positions[:, None]
        elif cache is not None:
            past = cache.length
            key, value = cache.update(layer_idx, key, value)
        if past > 0 and length > 1:  # new tokens see the whole past and the new tokens before them
            mask = torch.ones(length, past + length, dtype=torch.bool, device=query.device).tril(past)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=mask is None and past == 0 and length > 1,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, length, width)
        return self.resid_dropout(self.out_proj(out))


class RQTransformerMLP(nn.Module):
    """Feed-forward part of a block: Linear, exact GELU, Linear, dropout."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(hidden_states))))


class RQTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block (official `AttentionBlock`)."""

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = RQTransformerAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RQTransformerMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, cache: RQKeyValueCache | Cache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), cache, layer_idx)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class RQTransformerStack(nn.Module):
    """A causal stack of blocks (official `AttentionStack`), with activation checkpointing and a KV cache (an
    `RQKeyValueCache`, or a transformers `Cache` of `StaticLayer`s for compiled decoding)."""

    def __init__(self, config: RQTransformerConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([RQTransformerBlock(config) for _ in range(num_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, cache: RQKeyValueCache | Cache | None = None) -> torch.Tensor:
        checkpointing = (
            self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        )
        for layer_idx, layer in enumerate(self.layers):
            if checkpointing:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states)
            else:
                hidden_states = layer(hidden_states, cache, layer_idx)
        if isinstance(cache, RQKeyValueCache):  # a static cache counts its tokens itself
            cache.advance(hidden_states.shape[1])
        return hidden_states


class RQTransformerPreTrainedModel(RQHubMixin, PreTrainedModel):
    """Weight initialisation and loading glue shared by the RQ-Transformer models."""

    config: RQTransformerConfig
    config_class = RQTransformerConfig
    base_model_prefix = "rq_transformer"
    main_input_name = "codes"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RQTransformerBlock"]
    _supports_sdpa = True
    _model_card_kind = "rq_transformer"
    _expected_config = (
        "model_type",
        "rq_transformer",
        "Load an RQ-VAE folder with RQVAEModel.from_pretrained, a pipeline folder with "
        "RQTransformerPipeline.from_pretrained (or pass subfolder='transformer').",
    )

    def _model_card_class_names(self) -> list[str] | None:
        if self.config.num_classes is None or not self.config.id2label:
            return None
        return [self.config.id2label[i] for i in sorted(self.config.id2label)]

    def _model_card_extra(self) -> dict:
        if self.config.condition_type != "text":
            return {}
        notes = (
            f"Text-conditional: captions are tokenized into {self.config.max_text_length} tokens (vocabulary "
            f"{self.config.text_vocab_size}); classifier-free guidance uses the empty caption (or a negative "
            "prompt) as its unconditional branch"
            + (
                f", trained by caption dropout (p = {self.config.caption_dropout_prob})."
                if self.config.caption_dropout_prob > 0
                else "; this model was trained without caption dropout, so guidance is only an approximation."
            )
            + " `text_ids` are the caption token ids, long (batch, max_text_length), of the pipeline's tokenizer "
            "(`RQTransformerPipeline.tokenize_prompt`)."
        )
        return {"example_prompt": "a photo of a cat", "notes": notes}

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RQTransformerForCausalImageModeling):
            init.normal_(module.condition_position_embedding, mean=0.0, std=std)
            init.normal_(module.spatial_position_embedding, mean=0.0, std=std)
            init.normal_(module.depth_position_embedding, mean=0.0, std=std)


class RQTransformerForCausalImageModeling(RQTransformerPreTrainedModel):
    """RQ-Transformer over RQ-VAE codes (B, h, w, D): spatial transformer over positions, depth transformer
    over the codes of each position, one output head shared by all depths. See the module docstring for the
    exact inputs and for the mapping of the official weights."""

    _input_embed_layer = "code_embeddings"  # what `get_input_embeddings()` returns (accelerate's FSDP2 asks)

    def __init__(self, config: RQTransformerConfig) -> None:
        config.fill_unset_sizes()  # a config built for an RQ-VAE has them (`config.fill_from_vqvae(vqvae)`)
        super().__init__(config)
        height, width, depth = config.code_shape
        hidden = config.hidden_size
        self.code_embeddings = nn.Embedding(config.vocab_size, config.code_embedding_dim)
        self.spatial_input_proj = nn.Linear(config.code_embedding_dim, hidden)
        self.depth_input_proj = nn.Linear(config.code_embedding_dim, hidden)
        if config.condition_type == "text":
            num_conditions = config.text_vocab_size
        else:
            num_conditions = 1 if config.num_classes is None else config.num_classes + 1
        self.condition_embedding = nn.Embedding(num_conditions, hidden)
        self.condition_position_embedding = nn.Parameter(torch.zeros(1, config.condition_length, hidden))
        self.spatial_position_embedding = nn.Parameter(torch.zeros(1, height * width, hidden))
        self.depth_position_embedding = nn.Parameter(torch.zeros(1, depth, hidden))
        self.embd_dropout = nn.Dropout(config.embd_dropout)
        self.spatial_transformer = RQTransformerStack(config, config.num_spatial_layers)
        self.depth_transformer = RQTransformerStack(config, config.num_depth_layers)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(hidden, config.vocab_size)
        if config.condition_type == "text":  # next-caption-token head (official `cond_classifier`)
            self.text_output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
            self.text_output_proj = nn.Linear(hidden, config.text_vocab_size)
        self.post_init()

    # ------------------------------------------------------------------ helpers

    @property
    def null_class_index(self) -> int | None:
        """Index of the null class (unconditional branch of guidance); `None` for models without classes."""
        return self.config.num_classes

    def init_code_embeddings(self, vae_or_quantizer: object, freeze: bool = True) -> None:
        """Copy an RQ-VAE codebook into `code_embeddings` (as the official model embeds codes with it).

        Args:
            vae_or_quantizer (`object`): an object with `.quantizer.codebook(0)` (an `RQVAEModel`), with `.codebook(0)`
                (a `ResidualQuantizer`), or a `(vocab_size, code_embedding_dim)` tensor.
            freeze (`bool`, *optional*, defaults to `True`): make the table non-trainable, like the frozen codebook of
                the official training.
        """
        if isinstance(vae_or_quantizer, torch.Tensor):
            weight = vae_or_quantizer
        else:
            quantizer = getattr(vae_or_quantizer, "quantizer", vae_or_quantizer)
            if not callable(getattr(quantizer, "codebook", None)):
                raise TypeError(
                    "`vae_or_quantizer` must be a tensor, a quantizer with `.codebook(d)` or a model with "
                    f"`.quantizer.codebook(d)`, got {type(vae_or_quantizer).__name__}."
                )
            if getattr(quantizer, "shared_codebook", True) is False:
                raise ValueError(
                    "`vae_or_quantizer` must have one codebook shared by all depths "
                    "(`shared_codebook=True`), got a quantizer with one codebook per depth."
                )
            weight = quantizer.codebook(0)
        expected = (self.config.vocab_size, self.config.code_embedding_dim)
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"`vae_or_quantizer` codebook must have shape (vocab_size, code_embedding_dim) = {expected}, "
                f"got {tuple(weight.shape)}."
            )
        with torch.no_grad():
            self.code_embeddings.weight.copy_(weight.detach())
        self.code_embeddings.weight.requires_grad_(not freeze)

    def _check_codes(self, codes: torch.Tensor, name: str, batch_size: int | None = None) -> None:
        shape = tuple(self.config.code_shape)
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
            got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"`{name}` must be a torch.long tensor of shape (batch, *{shape}), got {got}.")
        if codes.dim() != 4 or tuple(codes.shape[1:]) != shape:
            raise ValueError(f"`{name}` must have shape (batch, *{shape}), got {tuple(codes.shape)}.")
        if codes.shape[0] == 0:
            raise ValueError(f"`{name}` must hold at least one code map, got shape {tuple(codes.shape)}.")
        if batch_size is not None and codes.shape[0] != batch_size:
            raise ValueError(f"`{name}` must have batch size {batch_size}, got {codes.shape[0]}.")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.vocab_size):
            raise ValueError(
                f"`{name}` must lie in [0, {self.config.vocab_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )

    @staticmethod
    def _default_batch_size(class_labels: object, text_ids: object, prefix_codes: object, generator: object) -> int:
        """The batch size the inputs of `generate_codes` imply: that of the class labels, the caption ids, the
        prefix codes or the generator list, the first one given."""
        if class_labels is not None and not isinstance(class_labels, int):
            return len(class_labels)
        for tensor in (text_ids, prefix_codes):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                return tensor.shape[0]
        if isinstance(generator, (list, tuple)):
            return len(generator)
        raise ValueError(
            "`batch_size` must be given when no class_labels, text_ids, prefix_codes or generator list "
            "set it, got None."
        )

    def _condition_tokens(
        self, class_labels: object, text_ids: object, batch_size: int, allow_null: bool
    ) -> torch.Tensor:
        """Indices into `condition_embedding`, (batch, condition_length): the class labels (one token), the
        caption token ids (`max_text_length` tokens), or zeros (the start token of unconditional models)."""
        device = self.condition_embedding.weight.device
        kind = self.config.condition_type
        if kind != "text" and text_ids is not None:
            raise ValueError(
                f"`text_ids` must be None for a model that is not text-conditional (condition_type={kind!r}), "
                "got a value."
            )
        if kind == "text":
            if class_labels is not None:
                raise ValueError(
                    "`class_labels` must be None for a text-conditional model (give `text_ids`), "
                    f"got {class_labels!r}."
                )
            return self._check_text_ids(text_ids, batch_size, "text_ids")
        if kind == "none":
            if class_labels is not None:
                raise ValueError(
                    "`class_labels` must be None for an unconditional model (num_classes=None), "
                    f"got {class_labels!r}."
                )
            return torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        num_classes = self.config.num_classes
        if class_labels is None:
            raise ValueError(
                f"`class_labels` must be given for a class-conditional model (num_classes={num_classes}), "
                "got None."
            )
        names = [class_labels] if isinstance(class_labels, str) else (
            [c for c in class_labels if isinstance(c, str)] if isinstance(class_labels, (list, tuple)) else []
        )
        if names:
            raise ValueError(
                f"`class_labels` must be class ids (integers), got class names such as {names[0]!r}: "
                "RQTransformerPipeline resolves names (`pipe(class_labels=[...])`, `pipe.get_label_ids(...)`)."
            )
        labels = torch.as_tensor(class_labels, device=device)
        if labels.dim() == 0:
            labels = labels.expand(batch_size)
        if labels.dtype in (torch.bool,) or labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise ValueError(f"`class_labels` must be integers, got dtype {labels.dtype}.")
        labels = labels.long()
        if labels.shape != (batch_size,):
            raise ValueError(f"`class_labels` must have shape ({batch_size},), got {tuple(labels.shape)}.")
        upper = num_classes + 1 if allow_null else num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= upper):
            raise ValueError(
                f"`class_labels` must lie in [0, {upper}), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]."
            )
        return labels[:, None]

    def _check_text_ids(self, text_ids: object, batch_size: int, name: str) -> torch.Tensor:
        length, vocab = self.config.max_text_length, self.config.text_vocab_size
        if text_ids is None:
            raise ValueError(
                f"`{name}` must be given for a text-conditional model: long (batch, {length}) caption token ids "
                "(e.g. from `RQTransformerPipeline.tokenize_prompt`), got None."
            )
        if not isinstance(text_ids, torch.Tensor) or text_ids.dtype.is_floating_point or text_ids.dtype in (
            torch.bool,
            torch.complex64,
            torch.complex128,
        ):
            got = text_ids.dtype if isinstance(text_ids, torch.Tensor) else type(text_ids).__name__
            raise ValueError(f"`{name}` must be an integer tensor (batch, {length}) of token ids, got {got}.")
        if tuple(text_ids.shape) != (batch_size, length):
            raise ValueError(
                f"`{name}` must have shape ({batch_size}, max_text_length={length}), got {tuple(text_ids.shape)}."
            )
        if text_ids.numel() and (text_ids.min() < 0 or text_ids.max() >= vocab):
            raise ValueError(
                f"`{name}` must lie in [0, text_vocab_size={vocab}), "
                f"got values in [{int(text_ids.min())}, {int(text_ids.max())}]."
            )
        return text_ids.to(self.condition_embedding.weight.device, torch.long)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """Condition tokens of the unconditional branch of classifier-free guidance, (batch, condition_length):
        the null class of a class-conditional model, the empty caption (padding tokens only) of a text model.
        Class and caption dropout feed the same tokens in training."""
        kind = self.config.condition_type
        if kind == "none":
            raise ValueError("an unconditional model (condition_type='none') has no null condition.")
        device = self.condition_embedding.weight.device
        value = self.null_class_index if kind == "class" else self.config.text_pad_token_id
        return torch.full((batch_size, self.config.condition_length), value, dtype=torch.long, device=device)

    def _spatial_inputs(
        self, condition_tokens: torch.Tensor, codes: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        """Inputs of the spatial transformer for the sequence indices [start, end).

        The sequence holds the L condition tokens (`condition_tokens` (batch, L)) and then the codes of
        positions 0..T-2 (`codes` (batch, T, D)): index i < L is
        `condition_embedding(condition_tokens[:, i]) + condition_position_embedding[i]`, index L + t is
        `sum_d spatial_input_proj(e(codes[:, t, d])) + spatial_position_embedding[t]`.
        """
        length = condition_tokens.shape[1]
        pieces = []
        if start < length:
            stop = min(end, length)
            condition = self.condition_embedding(condition_tokens[:, start:stop])
            pieces.append(condition + self.condition_position_embedding[:, start:stop])
        first, last = max(start, length) - length, end - length
        if last > first:
            embedded = self.spatial_input_proj(self.code_embeddings(codes[:, first:last])).sum(dim=-2)
            pieces.append(embedded + self.spatial_position_embedding[:, first:last])
        inputs = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return self.embd_dropout(inputs)

    def _code_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.output_norm(hidden_states))

    # ------------------------------------------------------------------ training forward

    def forward(
        self,
        codes: torch.LongTensor,
        class_labels: torch.LongTensor | Sequence[int] | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        text_ids: torch.LongTensor | None = None,
    ) -> RQTransformerOutput | tuple:
        """Score every code of `codes` given the condition and the codes before it.

        Args:
            codes (`torch.LongTensor`): long (batch, h, w, D), values in [0, vocab_size).
            class_labels (`torch.LongTensor | Sequence[int]`, *optional*): long (batch,) in [0, num_classes] for
                class-conditional models (`num_classes` is the null class); must be None for other models. While
                training with `class_dropout_prob > 0` each label is replaced by the null class with that probability.
            labels (`torch.Tensor`, *optional*): targets, either hard codes long (batch, h, w, D) (usually
                `codes`) or soft targets float (batch, h, w, D, vocab_size) of probabilities
                (`ResidualQuantizer.soft_codes(...).probs`).
            return_dict (`bool`, *optional*, defaults to `True`): return an [`RQTransformerOutput`] (else a tuple).
            text_ids (`torch.LongTensor`, *optional*): long (batch, max_text_length) caption token ids in [0,
                text_vocab_size) for text-conditional models (a tokenizer's ids, padded with `text_pad_token_id`); must
                be None for other models. While training with `caption_dropout_prob > 0` each caption is replaced by the
                empty caption (padding only) with that probability.

        Returns:
            [`RQTransformerOutput`] with `logits` (batch, h, w, D, vocab_size), for text models `text_logits`,
            and with `labels` the `loss` (the mean code cross-entropy; for text models the weighted sum of the
            code and caption-token cross-entropies, also returned apart as `image_loss` and `text_loss`). The
            tuple form is `(loss, logits)` / `(logits,)`, with `text_logits` appended for text models.
        """
        self._check_codes(codes, "codes")
        batch, height, width, depth = codes.shape
        condition = self._condition_tokens(class_labels, text_ids, batch, allow_null=True)
        dropout = self.config.caption_dropout_prob or self.config.class_dropout_prob  # at most one is set
        if self.training and dropout > 0:
            drop = torch.rand(batch, device=condition.device) < dropout
            condition = torch.where(drop[:, None], self.null_condition(batch), condition)

        condition_length = condition.shape[1]
        flat_codes = codes.reshape(batch, height * width, depth)
        spatial = self.spatial_transformer(
            self._spatial_inputs(condition, flat_codes, 0, condition_length + height * width - 1)
        )
        context = spatial[:, condition_length - 1:]  # h_t: the output just before position t
        # Depth input: h_t at depth 0, then the projected running sums of the code embeddings of position t.
        code_sums = self.code_embeddings(flat_codes[:, :, :-1]).cumsum(dim=-2)
        depth_inputs = torch.cat([context[:, :, None], self.depth_input_proj(code_sums)], dim=2)
        depth_inputs = depth_inputs + self.depth_position_embedding
        hidden = self.depth_transformer(depth_inputs.reshape(batch * height * width, depth, -1))
        logits = self._code_logits(hidden).reshape(batch, height, width, depth, -1)
        text_logits = None
        if self.config.condition_type == "text":
            text_logits = self.text_output_proj(self.text_output_norm(spatial[:, : condition_length - 1]))

        loss = image_loss = text_loss = None
        if labels is not None:
            loss = image_loss = self._loss(logits, labels)
            if text_logits is not None:
                if condition_length > 1:
                    flat_text = text_logits.reshape(-1, text_logits.shape[-1]).float()
                    text_loss = F.cross_entropy(flat_text, condition[:, 1:].reshape(-1))
                else:
                    text_loss = image_loss.new_zeros(())
                loss = self.config.text_loss_weight * text_loss + self.config.image_loss_weight * image_loss
        if not return_dict:
            output = (logits,) if text_logits is None else (logits, text_logits)
            return output if loss is None else (loss,) + output
        return RQTransformerOutput(
            loss=loss, logits=logits, text_logits=text_logits, image_loss=image_loss, text_loss=text_loss
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        vocab_size = self.config.vocab_size
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"`labels` must be a tensor, got {type(labels).__name__}.")
        if labels.dtype.is_floating_point:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"soft `labels` must have shape {tuple(logits.shape)} (probabilities over the codebook), "
                    f"got {tuple(labels.shape)}."
                )
            log_probs = F.log_softmax(logits.float(), dim=-1)
            return -(labels.float() * log_probs).sum(dim=-1).mean()
        if labels.dtype != torch.long:
            raise ValueError(f"`labels` must be torch.long codes or float probabilities, got {labels.dtype}.")
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"`labels` must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= vocab_size):
            raise ValueError(
                f"`labels` must lie in [0, {vocab_size}), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]."
            )
        return F.cross_entropy(logits.reshape(-1, vocab_size).float(), labels.reshape(-1))

    # ------------------------------------------------------------------ sampling

    def _logits_warpers(self, temperature: float, top_p: float | None) -> list:
        """transformers' warpers for one depth, built once per call (not once per step).

        Top-k is applied before them by keeping only the k best logits (`torch.topk`): the same distribution
        as `TopKLogitsWarper` followed by a softmax over all K codes, but softmax, top-p and the multinomial
        draw then run over k instead of K candidates (K = 16384, k = 1024 in the paper's setting).
        """
        warpers = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(temperature)))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=float(top_p)))
        return warpers

    @staticmethod
    def _sample(
        probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """One code per row; with a list of generators, row i draws from generator i.

        A generator on another device than the model (e.g. a CPU generator for a CUDA model, as diffusers
        allows) draws on its own device, so the same seed gives the same codes on every device.
        """

        def draw(p: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
            if g is None or g.device == p.device:
                return torch.multinomial(p, 1, generator=g)
            return torch.multinomial(p.to(g.device), 1, generator=g).to(p.device)

        if isinstance(generator, list):
            return torch.cat([draw(probs[i:i + 1], g) for i, g in enumerate(generator)])
        return draw(probs, generator)

    def _spatial_context(self, inputs: torch.Tensor, cache: RQKeyValueCache | Cache) -> torch.Tensor:
        """Spatial step: the context (rows, C) of the last of `inputs` (rows, new, C), the rest read from `cache`."""
        return self.spatial_transformer(inputs, cache)[:, -1]

    def _depth_logits(self, depth_input: torch.Tensor, cache: RQKeyValueCache | Cache) -> torch.Tensor:
        """Depth step: fp32 logits (rows, K) of the next code from one depth input (rows, C) and `cache`."""
        return self._code_logits(self.depth_transformer(depth_input[:, None], cache)[:, -1]).float()

    @staticmethod
    def _compile_mode(compile: object, use_cache: bool, device: torch.device) -> str | None:
        """The `torch.compile` mode of a `generate_codes(compile=...)` value."""
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if compile is not True and compile not in modes:
            raise ValueError(f"`compile` must be a bool or one of the torch.compile modes {modes}, got {compile!r}.")
        if not use_cache:
            raise ValueError("`compile` needs the key/value cache: `use_cache` must be True, got False.")
        if compile is True:
            return "reduce-overhead" if device.type == "cuda" else "default"
        return compile

    def _static_decoding(self, rows: int, mode: str | None, device: torch.device) -> "_StaticDecoding":
        """Static caches and compiled steps for `rows` rows, kept between calls (one setting at a time)."""
        dtype = self.output_proj.weight.dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        key = (rows, dtype, device, mode)
        decoding = self.__dict__.get("_static_decoding_state")
        if decoding is None or decoding.key != key:
            decoding = _StaticDecoding(self, key)
            self.__dict__["_static_decoding_state"] = decoding
        return decoding

    @torch.no_grad()
    @_in_eval_mode  # sampling never uses dropout, whatever mode the model was left in
    def generate_codes(
        self,
        batch_size: int | None = None,
        class_labels: torch.LongTensor | Sequence[int] | None = None,
        top_k: int | Sequence[int] | None = None,
        top_p: float | Sequence[float] | None = None,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        use_cache: bool = True,
        prefix_codes: torch.LongTensor | None = None,
        num_prefix_positions: int = 0,
        callback: Callable[[int, int, torch.LongTensor], None] | None = None,
        text_ids: torch.LongTensor | None = None,
        negative_text_ids: torch.LongTensor | None = None,
        compile: bool | str = False,
        guidance_schedule: str = "constant",
    ) -> torch.LongTensor:
        """Sample code maps autoregressively: h * w spatial steps, each followed by D depth steps.

        Args:
            batch_size (`int`, *optional*): number of code maps; defaults to the number of `class_labels`, of
                `text_ids`, of `prefix_codes` or of generators in a `generator` list.
            class_labels (`torch.LongTensor | Sequence[int]`, *optional*): long (batch,) in [0, num_classes) (or
                one int for all) for class-conditional models; must be None for other models.
            top_k (`int | Sequence[int]`, *optional*): keep the k most likely codes (one value, or a list with
                one value per depth); >= 1.
            top_p (`float | Sequence[float]`, *optional*): nucleus sampling mass in (0, 1] (one value or one per
                depth).
            temperature (`float`, *optional*, defaults to `1.0`): > 0; divides the logits.
            guidance_scale (`float`, *optional*, defaults to `1.0`): classifier-free guidance scale s >= 0 (class- and
                text-conditional models); with s != 1 the conditional and the unconditional rows (null class, or the
                empty caption / `negative_text_ids`) run in one batch and the logits become uncond + s * (cond -
                uncond).
            guidance_schedule (`str`, *optional*, defaults to `"constant"`): how the scale moves over the code
                positions (raster order): `"constant"` (s at every position), or a ramp from 1 (no guidance) at the
                first position to s at the last, `"linear"` or `"cosine"` (half a cosine period), as VAR and RAR ramp
                theirs.
            generator (`torch.Generator | list[torch.Generator]`, *optional*): a `torch.Generator`, or a list
                with one per sample (per-sample reproducibility).
            use_cache (`bool`, *optional*, defaults to `True`): keep keys/values of both transformers; `False`
                recomputes every prefix (same codes).
            prefix_codes (`torch.LongTensor`, *optional*): long (batch, h, w, D) whose first
                `num_prefix_positions` positions (raster order) are kept; the rest is sampled (completion).
            num_prefix_positions (`int`, *optional*, defaults to `0`): number of kept positions, in [0, h * w].
            callback (`Callable[[int, int, torch.LongTensor], None]`, *optional*): called as `callback(position,
                num_positions, codes)` after each sampled position (`position` is the 0-based raster index just
                completed, `num_positions = h * w`, `codes` the (batch, h, w, D) codes so far; positions from
                `num_prefix_positions` on). When it returns `True`, sampling stops there: the positions not sampled stay
                0.
            text_ids (`torch.LongTensor`, *optional*): long (batch, max_text_length) caption token ids for
                text-conditional models (see `forward`); must be None for other models.
            negative_text_ids (`torch.LongTensor`, *optional*): long (batch, max_text_length), text models with
                guidance only: the caption of the unconditional branch (a negative prompt); default the empty caption
                (padding only), which caption dropout trained.
            compile (`bool | str`, *optional*, defaults to `False`): decode with static key/value caches (transformers
                `StaticLayer`s) and `torch.compile`d steps: `True` (mode "reduce-overhead", i.e. CUDA graphs, on a GPU;
                "default" elsewhere) or a `torch.compile` mode. The first call compiles (seconds to minutes); later
                calls with the same batch, dtype and device reuse it, and the caches stay on the model until then. Same
                codes as the eager path for the same seed, up to rounding: logits differ by ~1e-6 (masked full-length
                attention, fused kernels), which can change a draw after many positions of a large model (the samples
                then differ but follow the same distribution). Needs `use_cache=True`.

        Returns:
            long (batch, h, w, D) codes.
        """
        height, width, depth = self.config.code_shape
        num_positions = height * width
        device = self.output_proj.weight.device

        # ---- arguments (the shared checks of `checks.py`; the pipeline runs the same ones before any work)
        if batch_size is None:
            batch_size = self._default_batch_size(class_labels, text_ids, prefix_codes, generator)
        batch_size = check_int("batch_size", batch_size)
        generator = check_generator(generator, batch_size)
        condition = self._condition_tokens(class_labels, text_ids, batch_size, allow_null=False)
        top_ks, top_ps, temperature, guidance_scale = check_sampling_args(
            top_k, top_p, temperature, guidance_scale, depth
        )
        guided = guidance_scale != 1.0
        scales = guidance_scales(guidance_scale, guidance_schedule, num_positions)
        if guided and self.config.condition_type == "none":
            raise ValueError(
                "`guidance_scale` must be 1.0 for an unconditional model (condition_type='none'), "
                f"got {guidance_scale!r}."
            )
        if negative_text_ids is not None:
            if self.config.condition_type != "text":
                raise ValueError(
                    "`negative_text_ids` must be None for a model that is not text-conditional "
                    f"(condition_type={self.config.condition_type!r}), got a value."
                )
            negative_text_ids = self._check_text_ids(negative_text_ids, batch_size, "negative_text_ids")
        num_prefix_positions = check_int("num_prefix_positions", num_prefix_positions, 0, num_positions)
        if prefix_codes is not None:
            self._check_codes(prefix_codes, "prefix_codes", batch_size)
        elif num_prefix_positions > 0:
            raise ValueError("`prefix_codes` must be given when num_prefix_positions > 0, got None.")

        # ---- state: one row per sample, plus one unconditional row per sample under guidance
        rows = 2 * batch_size if guided else batch_size
        if guided:
            unconditional = self.null_condition(batch_size) if negative_text_ids is None else negative_text_ids
            condition = torch.cat([condition, unconditional])
        codes = torch.zeros(rows, num_positions, depth, dtype=torch.long, device=device)
        if prefix_codes is not None:
            prefix = prefix_codes.to(device).reshape(batch_size, num_positions, depth)
            codes[:batch_size] = prefix
            if guided:
                codes[batch_size:] = prefix
        warpers = [self._logits_warpers(temperature, top_ps[d]) for d in range(depth)]
        top_ks = [k if k is not None and k < self.config.vocab_size else None for k in top_ks]
        spatial_step, depth_step = self._spatial_context, self._depth_logits
        if compile is not False:
            decoding = self._static_decoding(rows, self._compile_mode(compile, use_cache, device), device)
            spatial_cache, depth_cache = decoding.spatial_cache, decoding.depth_cache
            spatial_cache.reset()
        else:
            spatial_length = self.config.condition_length + num_positions - 1
            spatial_cache = RQKeyValueCache(self.config.num_spatial_layers, spatial_length) if use_cache else None
            depth_cache = RQKeyValueCache(self.config.num_depth_layers, depth) if use_cache else None
        depth_positions = self.depth_position_embedding[0]
        output = codes[:batch_size].view(batch_size, height, width, depth)

        condition_length = condition.shape[1]
        for position in range(num_prefix_positions, num_positions):
            # Spatial step: the context of `position` (with the cache, only the new tokens go in).
            end = condition_length + position
            first = end - 1 if use_cache and position > num_prefix_positions else 0
            inputs = self._spatial_inputs(condition, codes, first, end)
            if compile is not False and inputs.shape[1] == 1:  # a prefix is prefilled by the eager step
                spatial_step, depth_step = decoding.spatial_step, decoding.depth_step
            context = spatial_step(inputs, spatial_cache)

            # Depth steps: depth 0 sees the context, depth d the projected sum of the codes before it.
            depth_input = context + depth_positions[0]
            depth_inputs = []
            code_sum = None
            if use_cache:
                depth_cache.reset()
            for d in range(depth):
                if d > 0:
                    embedded = self.code_embeddings(codes[:, position, d - 1])
                    code_sum = embedded if code_sum is None else code_sum + embedded
                    depth_input = self.depth_input_proj(code_sum) + depth_positions[d]
                if use_cache:
                    logits = depth_step(depth_input, depth_cache)
                else:
                    depth_inputs.append(depth_input)
                    logits = self._code_logits(self.depth_transformer(torch.stack(depth_inputs, dim=1))[:, -1])
                    logits = logits.float()
                if guided:
                    conditional, unconditional = logits.chunk(2)
                    logits = unconditional + scales[position] * (conditional - unconditional)
                candidates = None
                if top_ks[d] is not None:
                    logits, candidates = logits.topk(top_ks[d], dim=-1)
                for warper in warpers[d]:
                    logits = warper(None, logits)
                sampled = self._sample(torch.softmax(logits, dim=-1), generator)
                sampled = (sampled if candidates is None else candidates.gather(1, sampled))[:, 0]
                codes[:batch_size, position, d] = sampled
                if guided:
                    codes[batch_size:, position, d] = sampled
            if callback is not None and callback(position, num_positions, output) is True:
                break
        return output.clone()


def guidance_scales(guidance_scale: float, schedule: str, num_positions: int) -> list[float]:
    """The classifier-free guidance scale of each of `num_positions` positions under `schedule` (see
    [`RQTransformerForCausalImageModeling.generate_codes`]): ramps go from 1 at the first position to
    `guidance_scale` at the last."""
    check_choice("guidance_schedule", schedule, GUIDANCE_SCHEDULES)
    if schedule == "constant" or num_positions == 1:
        return [float(guidance_scale)] * num_positions
    ramp = [t / (num_positions - 1) for t in range(num_positions)]
    if schedule == "cosine":
        ramp = [(1 - math.cos(math.pi * r)) / 2 for r in ramp]
    return [1.0 + (guidance_scale - 1.0) * r for r in ramp]


class _StaticDecoding:
    """Static key/value caches (transformers `StaticLayer`s) and the step functions of compiled decoding for one
    (rows, dtype, device, mode) setting. The model keeps the last one, so that `torch.compile` compiles once and
    CUDA graphs see the same cache buffers at every call; copies and pickles of the model leave it behind."""

    def __init__(self, model: RQTransformerForCausalImageModeling, key: tuple) -> None:
        rows, dtype, device, mode = key
        config = model.config
        self.key = key
        if not hasattr(StaticLayer(1), "cumulative_length"):
            import transformers

            raise RuntimeError(
                "`compile` needs a transformers whose `StaticLayer` counts its own tokens (`cumulative_length`; "
                f"5.17 and later do), got transformers {transformers.__version__}."
            )
        spatial_length = config.condition_length + config.num_positions - 1  # the condition tokens, then codes
        self.spatial_cache = Cache(layers=[StaticLayer(spatial_length) for _ in range(config.num_spatial_layers)])
        self.depth_cache = Cache(layers=[StaticLayer(config.code_depth) for _ in range(config.num_depth_layers)])
        head_dim = config.hidden_size // config.num_attention_heads
        for cache in (self.spatial_cache, self.depth_cache):
            cache.early_initialization(rows, config.num_attention_heads, head_dim, dtype, device)
        self.spatial_step, self.depth_step = model._spatial_context, model._depth_logits
        if mode is not None:
            self.spatial_step = torch.compile(self.spatial_step, mode=mode, fullgraph=True, dynamic=False)
            self.depth_step = torch.compile(self.depth_step, mode=mode, fullgraph=True, dynamic=False)
            if device.type == "cuda" and mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs
                self.spatial_step = self._graph_step(self.spatial_step)
                self.depth_step = self._graph_step(self.depth_step)

    @staticmethod
    def _graph_step(step: Callable) -> Callable:
        """Each call is a new CUDA-graph step whose output is copied out (the graph reuses its output buffer)."""

        def run(*args):
            torch.compiler.cudagraph_mark_step_begin()
            return step(*args).clone()

        return run

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __reduce__(self):
        return type(None), ()


# Saved folders carry this code so that `trust_remote_code=True` loads them without rq_hf installed.
RQTransformerConfig.register_for_auto_class()
RQTransformerForCausalImageModeling.register_for_auto_class("AutoModel")
if __package__ == "rq_hf.models":  # not in a saved folder's flat copy, which has no rq_hf beside it
    importlib.import_module("rq_hf.auto_registration").register_model(RQTransformerForCausalImageModeling)

__all__ = [
    "RQKeyValueCache",
    "RQTransformerForCausalImageModeling",
    "RQTransformerOutput",
    "RQTransformerPreTrainedModel",
]
