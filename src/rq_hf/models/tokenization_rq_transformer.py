"""Caption tokenizers of text-conditional RQ-Transformers, as transformers `PreTrainedTokenizerFast` objects.

The official CC-3M models tokenize captions with `tokenizers`' `CharBPETokenizer` (BERT normalisation,
lowercase, word-end suffix ``</w>``, ``[UNK]`` for unknown characters), add ``[PAD]`` as a special token and
pad / truncate every caption to ``block_size_cond = 32`` tokens (``rqvae/txtimg_datasets/cc3m.py``). The
functions here build the same tokenizer, either from the official vocabulary and merges files or trained on
new captions, wrapped in a `PreTrainedTokenizerFast` so that it saves with `save_pretrained` (``tokenizer.json``)
as a pipeline component and loads with `AutoTokenizer`.

This file imports only torch, tokenizers and transformers, so that a saved pipeline folder can carry it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import CharBPETokenizer
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"


def wrap_caption_tokenizer(tokenizer: CharBPETokenizer | Tokenizer, max_text_length: int) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers` tokenizer as the caption tokenizer of a pipeline (`[PAD]` padding, `[UNK]`).

    `[PAD]` is added as a special token when missing (as the official code does); `model_max_length` is
    `max_text_length`, the caption length of the transformer.
    """
    if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1:
        raise ValueError(f"`max_text_length` must be a positive integer, got {max_text_length!r}.")
    backend = getattr(tokenizer, "_tokenizer", tokenizer)
    if not isinstance(backend, Tokenizer):
        raise TypeError(
            f"`tokenizer` must be a tokenizers.Tokenizer or CharBPETokenizer, got {type(tokenizer).__name__}."
        )
    backend = copy.deepcopy(backend)
    backend.add_special_tokens([PAD_TOKEN])
    backend.no_padding()
    backend.no_truncation()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, model_max_length=max_text_length
    )


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int, max_text_length: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a `CharBPETokenizer` (lowercase, as the official one) on `captions`; ids 0 and 1 are `[PAD]`
    and `[UNK]`, as in the official 16k vocabulary. The vocabulary may end up smaller than `vocab_size`
    when the captions have fewer merges to offer."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
        raise ValueError(f"`vocab_size` must be an integer >= 3, got {vocab_size!r}.")
    tokenizer = CharBPETokenizer(unk_token=UNK_TOKEN, lowercase=True)
    tokenizer.train_from_iterator(
        captions,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, UNK_TOKEN],
        show_progress=False,
    )
    if tokenizer.get_vocab_size() <= 2:
        raise ValueError("`captions` must hold some text to train a tokenizer on, got none.")
    return wrap_caption_tokenizer(tokenizer, max_text_length)


def load_bpe_caption_tokenizer(vocab_file: str, merges_file: str, max_text_length: int) -> PreTrainedTokenizerFast:
    """The official caption tokenizer from its `bpe-16k-vocab.json` / `bpe-16k-merges.txt` files
    (``rqvae/txtimg_datasets/tokenizers/pretrained`` of kakaobrain/rq-vae-transformer), built as
    ``create_tokenizer("bpe16k_huggingface", lowercase=True)`` builds it."""
    tokenizer = CharBPETokenizer.from_file(vocab_file, merges_file, unk_token=UNK_TOKEN, lowercase=True)
    return wrap_caption_tokenizer(tokenizer, max_text_length)


def with_bpe_dropout(tokenizer: PreTrainedTokenizerFast, dropout: float) -> PreTrainedTokenizerFast:
    """A copy of a BPE caption tokenizer whose merges are skipped with probability `dropout` (BPE dropout,
    0.1 in the official CC-3M training). Draws come from the tokenizers library's own RNG (not seedable)."""
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}.")
    model = tokenizer.backend_tokenizer.model
    if type(model).__name__ != "BPE":
        raise ValueError(f"BPE dropout needs a BPE tokenizer, got a {type(model).__name__} model.")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.backend_tokenizer.model.dropout = float(dropout) if dropout > 0 else None
    return tokenizer


def tokenize_captions(
    tokenizer, captions: str | Sequence[str], max_text_length: int, warn_truncated: bool = True
) -> torch.LongTensor:
    """Caption token ids, long (len(captions), max_text_length): padded with the tokenizer's pad token and
    truncated (with `warn_truncated`, a warning names what a truncation drops)."""
    if isinstance(captions, str):
        captions = [captions]
    if not all(isinstance(c, str) for c in captions):
        raise TypeError(f"captions must be strings, got {[type(c).__name__ for c in captions]}.")
    encoded = tokenizer(
        list(captions), padding="max_length", max_length=max_text_length, truncation=True, return_tensors="pt"
    ).input_ids
    full = tokenizer(list(captions)).input_ids if warn_truncated else []
    for caption, ids in zip(captions, full):
        if len(ids) > max_text_length:
            dropped = tokenizer.decode(ids[max_text_length:])
            logger.warning(
                "A caption was truncated to %d tokens, dropping %r (of %r).", max_text_length, dropped, caption
            )
    return encoded.long()


__all__ = [
    "PAD_TOKEN",
    "UNK_TOKEN",
    "load_bpe_caption_tokenizer",
    "tokenize_captions",
    "train_caption_tokenizer",
    "with_bpe_dropout",
    "wrap_caption_tokenizer",
]
