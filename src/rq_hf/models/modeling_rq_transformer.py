"""RQ-Transformer: stage 2 of "Autoregressive Image Generation using Residual Quantization" (Lee et al.,
CVPR 2022, arXiv 2203.01941), as a transformers `PreTrainedModel`.

An image is an RQ-VAE code map of shape (h, w, D): T = h * w positions in raster order, D residual codes per
position. Two causal transformers model it:

* the *spatial* transformer runs over the T positions. Its input at position t is a condition token when
  t = 0 (class embedding, a learned start token for unconditional models) and otherwise
  ``sum_d spatial_input_proj(e(S[t-1, d])) + spatial_position_embedding[t-1]``; its output h_t summarises
  everything before position t;
* the *depth* transformer runs over the D codes of one position. Its input at depth 0 is
  ``h_t + depth_position_embedding[0]`` and at depth d > 0
  ``depth_input_proj(sum_{d' < d} e(S[t, d'])) + depth_position_embedding[d]``; its output at depth d
  predicts S[t, d] through one head (LayerNorm + Linear to K) shared by all depths.

The structure is that of the official code (kakaobrain/rq-vae-transformer,
``rqvae/models/rqtransformer``, configs with ``input_emb_vqvae``, ``head_emb_vqvae``, ``cumsum_depth_ctx``,
``shared_tok_emb`` and ``shared_cls_emb`` set, as in all released checkpoints): same modules, same math
(pre-LayerNorm blocks, exact GELU, no final LayerNorm inside the stacks, embedding dropout on the spatial
input only), so official weights convert by renaming. Official name -> name here:

=====================================================  ==================================================
official (stage 2 ``state_dict``)                      here
=====================================================  ==================================================
stage 1 ``quantizer.codebooks.0.weight[:K]``           ``code_embeddings.weight`` (K, E)
``input_mlp.{weight,bias}``                            ``spatial_input_proj.{weight,bias}`` (C, E)
``head_mlp.{weight,bias}``                             ``depth_input_proj.{weight,bias}`` (C, E)
``cond_emb.weight``                                    ``condition_embedding.weight`` (1 or N + 1, C)
``pos_emb_cond``                                       ``condition_position_embedding`` (1, 1, C)
``pos_emb_hw``                                         ``spatial_position_embedding`` (1, h*w, C)
``pos_emb_d``                                          ``depth_position_embedding`` (1, D, C)
``body_transformer.blocks.{i}.X``                      ``spatial_transformer.layers.{i}.X'``
``head_transformer.blocks.{i}.X``                      ``depth_transformer.layers.{i}.X'``
  X = ``ln1.*``, ``ln2.*``                               X' = ``ln_1.*``, ``ln_2.*``
  X = ``attn.{query,key,value}.*``                       X' = ``attn.{query,key,value}.*``
  X = ``attn.proj.*``                                    X' = ``attn.out_proj.*``
  X = ``mlp.0.*``, ``mlp.2.*``                           X' = ``mlp.fc_in.*``, ``mlp.fc_out.*``
``classifier.layer_norm.{weight,bias}``                ``output_norm.{weight,bias}``
``classifier.linear.{weight,bias}``                    ``output_proj.{weight,bias}`` (K, C)
=====================================================  ==================================================

Two things are not a pure rename:

* the official model has no code table of its own; it embeds codes with the frozen RQ-VAE codebook
  (``model_aux``). Here the table is ``code_embeddings`` (fill it from the stage-1 codebook without its
  padding row, e.g. with :meth:`RQTransformerForCausalImageModeling.init_code_embeddings`);
* a class-conditional model here has ``num_classes + 1`` condition embeddings: the last one is the null class
  of classifier-free guidance. Official ImageNet checkpoints (``vocab_size_cond: 1000``) were trained without
  class dropout, so the converter appends one row (e.g. the mean class embedding) and guidance with such a
  model is only an approximation. Unconditional models (``vocab_size_cond: 1``) map one to one.

Initialisation follows the official ``Stage2Model._init_weights`` (normal(0, initializer_range) for Linear
and Embedding weights and the position embeddings, zero biases, unit LayerNorms).

This file imports only torch, transformers and its sibling configuration file so that it can be copied next
to the weights as flat remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import ModelOutput

from .configuration_rq_transformer import RQTransformerConfig
from .hub_utils import RQHubMixin


@dataclass
class RQTransformerOutput(ModelOutput):
    """Output of [`RQTransformerForCausalImageModeling`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean cross-entropy over all `h * w * D` codes, returned when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch, h, w, D, vocab_size)`):
            Unnormalised scores of every code given all codes before it (raster order, then depth).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


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
        self, hidden_states: torch.Tensor, cache: RQKeyValueCache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        split = (batch, length, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(split).transpose(1, 2)
        key = self.key(hidden_states).view(split).transpose(1, 2)
        value = self.value(hidden_states).view(split).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.length
            key, value = cache.update(layer_idx, key, value)
        mask = None
        if past > 0 and length > 1:  # new tokens see the whole past and the new tokens before them
            mask = torch.ones(length, past + length, dtype=torch.bool, device=query.device).tril(past)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=past == 0 and length > 1,
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
        self, hidden_states: torch.Tensor, cache: RQKeyValueCache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), cache, layer_idx)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class RQTransformerStack(nn.Module):
    """A causal stack of blocks (official `AttentionStack`), with activation checkpointing and a KV cache."""

    def __init__(self, config: RQTransformerConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([RQTransformerBlock(config) for _ in range(num_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, cache: RQKeyValueCache | None = None) -> torch.Tensor:
        checkpointing = (
            self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        )
        for layer_idx, layer in enumerate(self.layers):
            if checkpointing:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states)
            else:
                hidden_states = layer(hidden_states, cache, layer_idx)
        if cache is not None:
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

    def _model_card_class_names(self) -> list[str] | None:
        if self.config.num_classes is None or not self.config.id2label:
            return None
        return [self.config.id2label[i] for i in sorted(self.config.id2label)]

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

    def __init__(self, config: RQTransformerConfig) -> None:
        super().__init__(config)
        height, width, depth = config.code_shape
        hidden = config.hidden_size
        self.code_embeddings = nn.Embedding(config.vocab_size, config.code_embedding_dim)
        self.spatial_input_proj = nn.Linear(config.code_embedding_dim, hidden)
        self.depth_input_proj = nn.Linear(config.code_embedding_dim, hidden)
        num_conditions = 1 if config.num_classes is None else config.num_classes + 1
        self.condition_embedding = nn.Embedding(num_conditions, hidden)
        self.condition_position_embedding = nn.Parameter(torch.zeros(1, 1, hidden))
        self.spatial_position_embedding = nn.Parameter(torch.zeros(1, height * width, hidden))
        self.depth_position_embedding = nn.Parameter(torch.zeros(1, depth, hidden))
        self.embd_dropout = nn.Dropout(config.embd_dropout)
        self.spatial_transformer = RQTransformerStack(config, config.num_spatial_layers)
        self.depth_transformer = RQTransformerStack(config, config.num_depth_layers)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(hidden, config.vocab_size)
        self.post_init()

    # ------------------------------------------------------------------ helpers

    @property
    def null_class_index(self) -> int | None:
        """Index of the null class (unconditional branch of guidance); `None` for unconditional models."""
        return self.config.num_classes

    def init_code_embeddings(self, vae_or_quantizer: object, freeze: bool = True) -> None:
        """Copy an RQ-VAE codebook into `code_embeddings` (as the official model embeds codes with it).

        Args:
            vae_or_quantizer: an object with `.quantizer.codebook(0)` (an `RQVAEModel`), with `.codebook(0)`
                (a `ResidualQuantizer`), or a `(vocab_size, code_embedding_dim)` tensor.
            freeze: make the table non-trainable, like the frozen codebook of the official training.
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

    def _check_codes(self, codes: torch.Tensor, name: str) -> None:
        shape = tuple(self.config.code_shape)
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
            got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"`{name}` must be a torch.long tensor of shape (batch, *{shape}), got {got}.")
        if codes.dim() != 4 or tuple(codes.shape[1:]) != shape:
            raise ValueError(f"`{name}` must have shape (batch, *{shape}), got {tuple(codes.shape)}.")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.vocab_size):
            raise ValueError(
                f"`{name}` must lie in [0, {self.config.vocab_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )

    def _condition_ids(self, class_labels: object, batch_size: int, allow_null: bool) -> torch.Tensor:
        """Indices into `condition_embedding` (batch,): the class labels, or zeros (start token)."""
        device = self.condition_embedding.weight.device
        num_classes = self.config.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError(
                    "`class_labels` must be None for an unconditional model (num_classes=None), "
                    f"got {class_labels!r}."
                )
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        if class_labels is None:
            raise ValueError(
                f"`class_labels` must be given for a class-conditional model (num_classes={num_classes}), "
                "got None."
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
        return labels

    def _spatial_inputs(
        self, condition_ids: torch.Tensor, codes: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        """Inputs of the spatial transformer for positions [start, end).

        Position 0 is the condition token; position t > 0 embeds the codes `codes[:, t - 1]` (codes are
        (batch, T, D)) as `sum_d spatial_input_proj(e(code_d)) + spatial_position_embedding[t - 1]`.
        """
        pieces = []
        if start == 0:
            condition = self.condition_embedding(condition_ids)[:, None]
            pieces.append(condition + self.condition_position_embedding)
        first, last = max(start, 1) - 1, end - 1
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
    ) -> RQTransformerOutput | tuple:
        """Score every code of `codes` given the codes before it.

        Args:
            codes: long (batch, h, w, D), values in [0, vocab_size).
            class_labels: long (batch,) in [0, num_classes] for class-conditional models (`num_classes` is the
                null class); must be None for unconditional models. While training with
                `class_dropout_prob > 0` each label is replaced by the null class with that probability.
            labels: targets, either hard codes long (batch, h, w, D) (usually `codes`) or soft targets float
                (batch, h, w, D, vocab_size) of probabilities (`ResidualQuantizer.soft_codes(...).probs`).
            return_dict: return an [`RQTransformerOutput`] (else a tuple).

        Returns:
            [`RQTransformerOutput`] with `logits` (batch, h, w, D, vocab_size) and, with `labels`, `loss` (the
            mean cross-entropy over all codes).
        """
        self._check_codes(codes, "codes")
        batch, height, width, depth = codes.shape
        condition_ids = self._condition_ids(class_labels, batch, allow_null=True)
        if self.training and self.config.class_dropout_prob > 0:
            drop = torch.rand(batch, device=condition_ids.device) < self.config.class_dropout_prob
            null = torch.full_like(condition_ids, self.null_class_index)
            condition_ids = torch.where(drop, null, condition_ids)

        flat_codes = codes.reshape(batch, height * width, depth)
        context = self.spatial_transformer(self._spatial_inputs(condition_ids, flat_codes, 0, height * width))
        # Depth input: h_t at depth 0, then the projected running sums of the code embeddings of position t.
        code_sums = self.code_embeddings(flat_codes[:, :, :-1]).cumsum(dim=-2)
        depth_inputs = torch.cat([context[:, :, None], self.depth_input_proj(code_sums)], dim=2)
        depth_inputs = depth_inputs + self.depth_position_embedding
        hidden = self.depth_transformer(depth_inputs.reshape(batch * height * width, depth, -1))
        logits = self._code_logits(hidden).reshape(batch, height, width, depth, -1)

        loss = self._loss(logits, labels) if labels is not None else None
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return RQTransformerOutput(loss=loss, logits=logits)

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

    def _per_depth(self, name: str, value: object, check: Callable[[object], bool], expected: str) -> list:
        """Broadcast one value (or None) to a list with one value per depth, checking each one."""
        depth = self.config.code_depth
        values = list(value) if isinstance(value, (list, tuple)) else [value] * depth
        if len(values) != depth:
            raise ValueError(
                f"`{name}` must be one value or a list of {depth} (one per depth), got {value!r}."
            )
        for item in values:
            if item is not None and not check(item):
                raise ValueError(
                    f"`{name}` must be {expected} (or a list of them, one per depth), got {value!r}."
                )
        return values

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

    @torch.no_grad()
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
        guidance_schedule: str = "constant",
    ) -> torch.LongTensor:
        """Sample code maps autoregressively: h * w spatial steps, each followed by D depth steps.

        Args:
            batch_size: number of code maps; defaults to the number of `class_labels`, of `prefix_codes` or of
                generators in a `generator` list.
            class_labels: long (batch,) in [0, num_classes) (or one int for all) for class-conditional models;
                must be None for unconditional models.
            top_k: keep the k most likely codes (one value, or a list with one value per depth); >= 1.
            top_p: nucleus sampling mass in (0, 1] (one value or one per depth).
            temperature: > 0; divides the logits.
            guidance_scale: classifier-free guidance scale s >= 0 (class-conditional models only); with s != 1
                the conditional and null-class rows run in one batch and the logits become
                uncond + s * (cond - uncond).
            guidance_schedule: how the scale moves over the code positions (raster order): `"constant"` (s at
                every position), or a ramp from 1 (no guidance) at the first position to s at the last,
                `"linear"` or `"cosine"` (half a cosine period), as VAR and RAR ramp theirs.
            generator: a `torch.Generator`, or a list with one per sample (per-sample reproducibility).
            use_cache: keep keys/values of both transformers; `False` recomputes every prefix (same codes).
            prefix_codes: long (batch, h, w, D) whose first `num_prefix_positions` positions (raster order)
                are kept; the rest is sampled (completion).
            num_prefix_positions: number of kept positions, in [0, h * w].
            callback: called as `callback(position, num_positions, codes)` after each sampled position
                (`position` is the 0-based raster index just completed, `num_positions = h * w`, `codes` the
                (batch, h, w, D) codes so far; positions from `num_prefix_positions` on).

        Returns:
            long (batch, h, w, D) codes.
        """
        height, width, depth = self.config.code_shape
        num_positions = height * width
        device = self.output_proj.weight.device

        # ---- arguments
        if isinstance(generator, (list, tuple)):
            generator = list(generator)
        generators = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in generators) or None in generators[1:]:
            raise ValueError(f"`generator` must be a torch.Generator or a list of them, got {generator!r}.")
        if batch_size is None:
            if class_labels is not None and not isinstance(class_labels, int):
                batch_size = len(class_labels)
            elif prefix_codes is not None and isinstance(prefix_codes, torch.Tensor):
                batch_size = prefix_codes.shape[0]
            elif isinstance(generator, list):
                batch_size = len(generator)
            else:
                raise ValueError(
                    "`batch_size` must be given when no class_labels, prefix_codes or generator list fix it, "
                    "got None."
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` list must have one generator per sample ({batch_size}), got {len(generator)}."
            )
        condition_ids = self._condition_ids(class_labels, batch_size, allow_null=False)

        def is_number(x: object) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if not is_number(temperature) or not temperature > 0:
            raise ValueError(f"`temperature` must be a number > 0, got {temperature!r}.")
        def is_count(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 1

        top_ks = self._per_depth("top_k", top_k, is_count, "an integer >= 1")
        top_ps = self._per_depth("top_p", top_p, lambda p: is_number(p) and 0 < p <= 1, "a number in (0, 1]")
        if not is_number(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0, got {guidance_scale!r}.")
        guided = guidance_scale != 1.0
        scales = guidance_scales(guidance_scale, guidance_schedule, num_positions)
        if guided and self.config.num_classes is None:
            raise ValueError(
                "`guidance_scale` must be 1.0 for an unconditional model (num_classes=None), "
                f"got {guidance_scale!r}."
            )
        if isinstance(num_prefix_positions, bool) or not isinstance(num_prefix_positions, int) or not (
            0 <= num_prefix_positions <= num_positions
        ):
            raise ValueError(
                f"`num_prefix_positions` must be an integer in [0, {num_positions}], "
                f"got {num_prefix_positions!r}."
            )
        if prefix_codes is not None:
            self._check_codes(prefix_codes, "prefix_codes")
            if prefix_codes.shape[0] != batch_size:
                raise ValueError(
                    f"`prefix_codes` must have batch size {batch_size}, got {prefix_codes.shape[0]}."
                )
        elif num_prefix_positions > 0:
            raise ValueError("`prefix_codes` must be given when num_prefix_positions > 0, got None.")

        # ---- state: one row per sample, plus one null-class row per sample under guidance
        rows = 2 * batch_size if guided else batch_size
        if guided:
            condition_ids = torch.cat([condition_ids, torch.full_like(condition_ids, self.null_class_index)])
        codes = torch.zeros(rows, num_positions, depth, dtype=torch.long, device=device)
        if prefix_codes is not None:
            prefix = prefix_codes.to(device).reshape(batch_size, num_positions, depth)
            codes[:batch_size] = prefix
            if guided:
                codes[batch_size:] = prefix
        warpers = [self._logits_warpers(temperature, top_ps[d]) for d in range(depth)]
        top_ks = [k if k is not None and k < self.config.vocab_size else None for k in top_ks]
        spatial_cache = RQKeyValueCache(self.config.num_spatial_layers, num_positions) if use_cache else None
        depth_cache = RQKeyValueCache(self.config.num_depth_layers, depth) if use_cache else None
        depth_positions = self.depth_position_embedding[0]
        output = codes[:batch_size].view(batch_size, height, width, depth)

        for position in range(num_prefix_positions, num_positions):
            # Spatial step: the context of `position` (with the cache, only the new tokens go in).
            first = position if use_cache and position > num_prefix_positions else 0
            inputs = self._spatial_inputs(condition_ids, codes, first, position + 1)
            context = self.spatial_transformer(inputs, spatial_cache)[:, -1]

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
                    hidden = self.depth_transformer(depth_input[:, None], depth_cache)[:, -1]
                else:
                    depth_inputs.append(depth_input)
                    hidden = self.depth_transformer(torch.stack(depth_inputs, dim=1))[:, -1]
                logits = self._code_logits(hidden).float()
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
            if callback is not None:
                callback(position, num_positions, output)
        return output.clone()


GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")


def guidance_scales(guidance_scale: float, schedule: str, num_positions: int) -> list[float]:
    """The classifier-free guidance scale of each of `num_positions` positions under `schedule` (see
    [`RQTransformerForCausalImageModeling.generate_codes`]): ramps go from 1 at the first position to
    `guidance_scale` at the last."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {schedule!r}.")
    if schedule == "constant" or num_positions == 1:
        return [float(guidance_scale)] * num_positions
    ramp = [t / (num_positions - 1) for t in range(num_positions)]
    if schedule == "cosine":
        ramp = [(1 - math.cos(math.pi * r)) / 2 for r in ramp]
    return [1.0 + (guidance_scale - 1.0) * r for r in ramp]


def _register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel` know the model (once, even if this file is imported twice)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if RQTransformerConfig.model_type not in CONFIG_MAPPING:
        AutoConfig.register(RQTransformerConfig.model_type, RQTransformerConfig)
        AutoModel.register(RQTransformerConfig, RQTransformerForCausalImageModeling)
    # Saved folders carry this code so that `trust_remote_code=True` loads them without rq_hf installed.
    RQTransformerConfig.register_for_auto_class()
    RQTransformerForCausalImageModeling.register_for_auto_class("AutoModel")


_register_auto_classes()

__all__ = [
    "RQKeyValueCache",
    "RQTransformerForCausalImageModeling",
    "RQTransformerOutput",
    "RQTransformerPreTrainedModel",
]
