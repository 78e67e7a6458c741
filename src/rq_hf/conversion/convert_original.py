"""Convert the official RQ-VAE / RQ-Transformer checkpoints (kakaobrain/rq-vae-transformer) to rq-hf.

A release tarball extracts to ``<name>/stage1/{model.pt, config.yaml}`` (the RQ-VAE) and
``<name>/stage2/{model.pt, config.yaml}`` (the RQ-Transformer); ``torch.load(model.pt)["state_dict"]``
holds the weights. The converter writes an ``RQTransformerPipeline`` folder (``vqvae/`` +
``transformer/``), or only an ``RQVAEModel`` folder when there is no ``stage2/``::

    python -m rq_hf.conversion.convert_original --checkpoint_dir ffhq --output_dir rq-ffhq

Official checkpoints (links in the original repository's README; code Apache-2.0, weights
CC-BY-NC-SA-4.0, no commercial use):

    ========================  ============  =============================================================
    release                   stage 2       command
    ========================  ============  =============================================================
    ffhq                      uncond 355M   ... --checkpoint_dir ffhq --output_dir rq-ffhq
    church                    uncond 370M   ... --checkpoint_dir church --output_dir rq-church
    cat                       uncond 612M   ... --checkpoint_dir cat --output_dir rq-cat
    bedroom                   uncond 612M   ... --checkpoint_dir bedroom --output_dir rq-bedroom
    imagenet_480M             class 480M    ... --checkpoint_dir imagenet_480M --output_dir rq-in-480m
    imagenet_821M             class 821M    ... --checkpoint_dir imagenet_821M --output_dir rq-in-821m
    imagenet_1.4B             class 1.4B    ... --checkpoint_dir imagenet_1.4B --output_dir rq-in-1.4b
    imagenet_1.4B_rqvae_50e   class 1.4B    ... --checkpoint_dir imagenet_1.4B_rqvae_50e --output_dir ...
    imagenet_3.8B_rqvae_50e   class 3.8B    ... --checkpoint_dir imagenet_3.8B_rqvae_50e --output_dir ...
    cc3m                      text 654M     ... --checkpoint_dir cc3m --tokenizer_dir TOK --output_dir rq-cc3m
    cc3m_cc12m_yfcc           text 3.9B     ... --checkpoint_dir cc3m_cc12m_yfcc --tokenizer_dir TOK ...
    ========================  ============  =============================================================

Text-conditional releases need the caption tokenizer, which the tarballs do not hold: its vocabulary and
merges files (``bpe-16k-vocab.json``, ``bpe-16k-merges.txt``) are in the original repository, folder
``rqvae/txtimg_datasets/tokenizers/pretrained``; pass that folder as ``--tokenizer_dir`` (nothing is
downloaded). The tokenizer is saved as the pipeline's ``tokenizer/`` (a ``PreTrainedTokenizerFast`` with the
official lowercasing, ``[PAD]`` padding and truncation to ``block_size_cond`` tokens).

The ``.pt`` files are read with ``torch.load(weights_only=True)``; a file that needs full unpickling is
refused with an explanation unless ``--allow_pickle`` is given. Conversion is strict: every source tensor
is used and every target tensor filled, otherwise it stops and lists what is left on both sides.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ..models.atomic_save import atomic_save_directory
from ..models.hub_utils import tensors_on_meta

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

WEIGHTS_LICENSE = "cc-by-nc-sa-4.0"
ORIGINAL_REPO = "https://github.com/kakaobrain/rq-vae-transformer"


class CheckpointMismatchError(ValueError):
    """The official state dict and the rq-hf model do not correspond one to one."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be read with ``torch.load(weights_only=True)``."""


class UnsupportedCheckpointError(NotImplementedError):
    """An official model variant that rq-hf cannot represent (yet)."""


# --------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------


def load_official_checkpoint(path: str, allow_pickle: bool = False, key: str = "state_dict") -> StateDict:
    """Read ``torch.load(path)[key]`` from an official ``model.pt``.

    The file is opened with ``weights_only=True``, which refuses to run code stored in the pickle. When that
    fails, :class:`UnsafeCheckpointError` explains why; only with ``allow_pickle=True`` (the CLI's
    ``--allow_pickle``) is the file unpickled fully, which runs whatever code it contains.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` must be an existing checkpoint file, got {path!r}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not _looks_like_torch_file(path) or isinstance(err, EOFError) or "PytorchStreamReader" in str(err):
            raise ValueError(
                f"{path} is not a valid PyTorch checkpoint ({first_line}): it is truncated or corrupted, or not "
                "a file written by torch.save. Download or copy it again."
            ) from err
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path} could not be loaded with torch.load(weights_only=True): it holds Python objects "
                f"other than tensors and plain containers ({first_line}). Loading it fully executes "
                "whatever code the file contains. Only if you trust where the file comes from, pass "
                "--allow_pickle (allow_pickle=True) to load it anyway."
            ) from err
        logger.warning("Loading %s with full unpickling (--allow_pickle): this runs code stored in it.", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping) or key not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path} must hold a dict with the key {key!r} (official layout), got {found}.")
    state_dict = checkpoint[key]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}[{key!r}] must map names to tensors; not tensors: {bad[:10]}.")
    return dict(state_dict)


def _looks_like_torch_file(path: str) -> bool:
    """A zip archive (torch.save's format since torch 1.6) or a pickle (protocol >= 2, the legacy format)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and head[1] >= 2)


def load_official_config(path: str) -> Dict[str, Any]:
    """Read an official ``config.yaml`` (plain YAML, read with ``yaml.safe_load``)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` must be an existing config.yaml, got {path!r}.")
    with open(path) as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise ValueError(
            f"{path} must be an official config with an `arch` section, got {type(config).__name__}."
        )
    return config


def _arch(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config["arch"] if "arch" in config else config


# --------------------------------------------------------------------------------------------------------
# strict bookkeeping
# --------------------------------------------------------------------------------------------------------


class _Source:
    """A source state dict that remembers which keys were used."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self.state_dict = state_dict
        self.used: set = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state_dict

    def take(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.state_dict[key]

    def unused(self) -> List[str]:
        return sorted(set(self.state_dict) - self.used)


def _format_keys(keys: Sequence[str], limit: int = 40) -> str:
    if not keys:
        return "    (none)"
    lines = [f"    {k}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
    return "\n".join(lines)


def check_state_dicts(
    what: str,
    unused_source: Sequence[str],
    converted: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
) -> None:
    """Raise :class:`CheckpointMismatchError` unless the conversion is one to one.

    ``unused_source``: official keys that no target took; ``converted``: the new state dict;
    ``expected``: the target model's state dict (names and shapes; values may be on the meta device).
    """
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = sorted(
        f"{k}: converted {tuple(converted[k].shape)}, model {tuple(expected[k].shape)}"
        for k in set(converted) & set(expected)
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    )
    if unused_source or missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"The official {what} checkpoint does not map one to one onto the rq-hf model.\n"
            f"  official keys not used ({len(unused_source)}):\n{_format_keys(list(unused_source))}\n"
            f"  model keys not filled ({len(missing)}):\n{_format_keys(missing)}\n"
            f"  converted keys the model does not have ({len(unexpected)}):\n{_format_keys(unexpected)}\n"
            f"  shape mismatches ({len(shapes)}):\n{_format_keys(shapes)}"
        )


def _meta_state_dict(build) -> StateDict:
    with torch.device("meta"):
        model = build()
    return model.state_dict()


# --------------------------------------------------------------------------------------------------------
# stage 1: RQ-VAE
# --------------------------------------------------------------------------------------------------------


def rqvae_kwargs_from_official(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Translate an official stage-1 config (``arch.hparams``, ``arch.ddconfig``) to ``RQVAEModel`` kwargs."""
    arch = _arch(config)
    hp, dd = dict(arch.get("hparams", {})), dict(arch.get("ddconfig", {}))
    if arch.get("type", "rq-vae") != "rq-vae":
        raise UnsupportedCheckpointError(f"stage-1 `arch.type` must be 'rq-vae', got {arch.get('type')!r}.")
    if hp.get("bottleneck_type", "rq") != "rq":
        raise UnsupportedCheckpointError(
            f"`arch.hparams.bottleneck_type` must be 'rq', got {hp.get('bottleneck_type')!r}."
        )
    if dd.get("double_z", False):
        raise UnsupportedCheckpointError("`arch.ddconfig.double_z` must be false for an RQ-VAE, got true.")
    if not dd.get("resamp_with_conv", True):
        raise UnsupportedCheckpointError("`arch.ddconfig.resamp_with_conv` false (pooling) is not supported.")
    n_embed = hp["n_embed"]
    if not isinstance(n_embed, int):
        raise UnsupportedCheckpointError(
            f"`arch.hparams.n_embed` must be one codebook size (int), got {n_embed!r}."
        )
    latent_shape, code_shape = list(hp["latent_shape"]), list(hp["code_shape"])
    if latent_shape[:2] != code_shape[:2] or latent_shape[2] != hp["embed_dim"]:
        raise UnsupportedCheckpointError(
            "rq-hf quantizes each latent vector on its own: `latent_shape` must be "
            f"[h, w, embed_dim] with the `code_shape` [h, w, D], got latent_shape={latent_shape}, "
            f"code_shape={code_shape}, embed_dim={hp['embed_dim']}."
        )
    ch, ch_mult = dd["ch"], list(dd["ch_mult"])
    resolution, attn = dd["resolution"], set(dd.get("attn_resolutions", []))
    n_levels = len(ch_mult)
    level_res = [resolution // 2**i for i in range(n_levels)]
    down = ["AttnDownEncoderBlock2D" if r in attn else "DownEncoderBlock2D" for r in level_res]
    up = ["AttnUpDecoderBlock2D" if r in attn else "UpDecoderBlock2D" for r in reversed(level_res)]
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [ch * m for m in ch_mult],
        "layers_per_block": dd["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": dd["z_channels"],
        "norm_num_groups": 32,
        "sample_size": resolution,
        "vq_embed_dim": hp["embed_dim"],
        "mid_block_add_attention": True,
        "codebook_size": n_embed,
        "code_depth": code_shape[2],
        "shared_codebook": bool(hp.get("shared_codebook", False)),
        "ema_decay": float(hp.get("decay", 0.99)),
        "restart_unused_codes": bool(hp.get("restart_unused_codes", False)),
        "commitment_weight": float(hp.get("latent_loss_weight", 0.25)),
    }


_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename_autoencoder_key(key: str, n_levels: int) -> Optional[str]:
    """Official encoder/decoder/quant-conv key -> diffusers ``Encoder``/``Decoder`` key (None: no rule)."""
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", key)
    if m or re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key)
    if m:
        return f"{m[1]}.conv_norm_out.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)", key)
    if m:
        if m[2] == "attn_1":
            part = _ATTN_PARTS.get(m[3])
            return part and f"{m[1]}.mid_block.attentions.0.{part}.{m[4]}"
        part = _RESNET_PARTS.get(m[3])
        index = 0 if m[2] == "block_1" else 1
        return part and f"{m[1]}.mid_block.resnets.{index}.{part}.{m[4]}"
    m = re.fullmatch(
        r"(encoder)\.down\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key
    ) or re.fullmatch(r"(decoder)\.up\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m:
        level = int(m[2])
        if level >= n_levels:
            return None
        blocks = "down_blocks" if m[1] == "encoder" else "up_blocks"
        index = level if m[1] == "encoder" else n_levels - 1 - level  # decoder.up is indexed by resolution
        group, part = (
            ("resnets", _RESNET_PARTS.get(m[5])) if m[3] == "block" else ("attentions", _ATTN_PARTS.get(m[5]))
        )
        return part and f"{m[1]}.{blocks}.{index}.{group}.{m[4]}.{part}.{m[6]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m and int(m[1]) < n_levels:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m and int(m[1]) < n_levels:
        return f"decoder.up_blocks.{n_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    return None


def _official_codebooks(
    source: _Source, hp: Mapping[str, Any]
) -> Tuple[List[int], List[Dict[str, torch.Tensor]]]:
    """Read ``quantizer.codebooks.<d>.*``; return the depths that own a book and their (K, dim) tensors."""
    depth, n_embed = hp["code_shape"][2], hp["n_embed"]
    shared = bool(hp.get("shared_codebook", False))
    books: List[Dict[str, torch.Tensor]] = []
    for d in range(depth):
        prefix = f"quantizer.codebooks.{d}."
        names = ("weight", "cluster_size_ema", "embed_ema")
        if not all(prefix + n in source for n in names):
            continue  # left for the strictness report (target keys stay unfilled)
        weight, size, ema = (source.take(prefix + n) for n in names)
        if weight.shape[0] != n_embed + 1:
            raise CheckpointMismatchError(
                f"`{prefix}weight` must have n_embed + 1 = {n_embed + 1} rows (the last is the padding row), "
                f"got shape {tuple(weight.shape)}."
            )
        if weight[-1].abs().max() != 0:
            logger.warning(
                "The padding row (last row) of `%sweight` is not zero; it is dropped anyway.", prefix
            )
        books.append({"embed": weight[:-1], "embed_ema": ema, "cluster_size_ema": size})
    if shared and books:
        for d, book in enumerate(books[1:], start=1):
            for name, tensor in book.items():
                if not torch.equal(tensor, books[0][name]):
                    raise CheckpointMismatchError(
                        f"`shared_codebook` is true but `quantizer.codebooks.{d}` differs from "
                        f"`quantizer.codebooks.0` in {name!r}."
                    )
        books = books[:1]
    return books


def convert_rqvae_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> Tuple[Dict[str, Any], StateDict]:
    """Convert an official RQ-VAE state dict; return ``(RQVAEModel kwargs, rq-hf state dict)``.

    Renames only (see the module docstring of the tests for the tables): ``nin_shortcut`` ->
    ``conv_shortcut``; ``decoder.up.<i>`` (indexed by resolution) -> ``decoder.up_blocks.<levels-1-i>``;
    attention ``q, k, v, proj_out`` 1x1 convolutions -> ``to_q, to_k, to_v, to_out.0`` linear weights;
    codebooks of ``n_embed + 1`` rows -> ``quantizer.embed`` without the padding row (one book when shared).
    Raises :class:`CheckpointMismatchError` listing every unused source key and unfilled target key.
    """
    from ..models.autoencoder_rqvae import RQVAEModel

    kwargs = rqvae_kwargs_from_official(config)
    hp = _arch(config)["hparams"]
    n_levels = len(kwargs["block_out_channels"])
    source = _Source(state_dict)
    converted: StateDict = {}
    for key in state_dict:
        new_key = _rename_autoencoder_key(key, n_levels)
        if new_key is None:
            continue
        tensor = source.take(key)
        if re.search(r"attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new_key):
            if tensor.ndim != 4 or tensor.shape[2:] != (1, 1):
                raise CheckpointMismatchError(
                    f"`{key}` must be a 1x1 convolution, got shape {tuple(tensor.shape)}."
                )
            tensor = tensor[:, :, 0, 0]
        converted[new_key] = tensor
    books = _official_codebooks(source, hp)
    if books:
        for name in ("embed", "embed_ema", "cluster_size_ema"):
            converted[f"quantizer.{name}"] = torch.stack([b[name] for b in books]).contiguous()
    expected = _meta_state_dict(lambda: RQVAEModel(**kwargs))
    # Bookkeeping buffers of our quantizer that the official one does not have: a trained codebook is
    # initialised (no k-means on the next batch).
    if "quantizer.initialized" in expected and books:
        converted["quantizer.initialized"] = torch.ones(
            expected["quantizer.initialized"].shape, dtype=torch.bool
        )
    check_state_dicts("RQ-VAE (stage 1)", source.unused(), converted, expected)
    return kwargs, converted


def build_model(cls, init: Any, state_dict: StateDict):
    """Instantiate ``cls(init)`` (kwargs dict or config) on the meta device and assign ``state_dict``."""
    with torch.device("meta"):
        model = cls(**init) if isinstance(init, dict) else cls(init)
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftovers = tensors_on_meta(model)
    if leftovers:
        logger.debug("Tensors left on the meta device (not persistent, rebuilt on load): %s", leftovers)
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# stage 2: RQ-Transformer
# --------------------------------------------------------------------------------------------------------

_BLOCK_PARTS = {
    "ln1": "ln_1",
    "ln2": "ln_2",
    "attn.query": "attn.query",
    "attn.key": "attn.key",
    "attn.value": "attn.value",
    "attn.proj": "attn.out_proj",
    "mlp.0": "mlp.fc_in",
    "mlp.2": "mlp.fc_out",
}
_TOP_LEVEL = {
    "input_mlp.weight": "spatial_input_proj.weight",
    "input_mlp.bias": "spatial_input_proj.bias",
    "head_mlp.weight": "depth_input_proj.weight",
    "head_mlp.bias": "depth_input_proj.bias",
    "pos_emb_cond": "condition_position_embedding",
    "pos_emb_hw": "spatial_position_embedding",
    "pos_emb_d": "depth_position_embedding",
    "classifier.layer_norm.weight": "output_norm.weight",
    "classifier.layer_norm.bias": "output_norm.bias",
    "classifier.linear.weight": "output_proj.weight",
    "classifier.linear.bias": "output_proj.bias",
    "cond_classifier.layer_norm.weight": "text_output_norm.weight",
    "cond_classifier.layer_norm.bias": "text_output_norm.bias",
    "cond_classifier.linear.weight": "text_output_proj.weight",
    "cond_classifier.linear.bias": "text_output_proj.bias",
}


def is_text_conditional(config: Mapping[str, Any]) -> bool:
    """True for the text-to-image models (CC-3M, the 30M-pair model): a condition sequence longer than 1."""
    return int(_arch(config).get("block_size_cond", 0) or 0) > 1


#: Official ``dataset.txt_tok_name`` -> prefix of its ``<prefix>-vocab.json`` / ``<prefix>-merges.txt`` files
#: (``CharBPETokenizer.from_file`` in ``rqvae/txtimg_datasets/tokenizers/__init__.py``).
OFFICIAL_TOKENIZER_FILES = {"bpe16k_huggingface": "bpe-16k", "bpe30k_huggingface": "bpe-30k"}


def official_tokenizer_files(config: Mapping[str, Any], tokenizer_dir: Optional[str]) -> Tuple[str, str]:
    """The vocabulary and merges files of a text model's caption tokenizer in ``tokenizer_dir``."""
    name = (config.get("dataset") or {}).get("txt_tok_name", "bpe16k_huggingface")
    if name not in OFFICIAL_TOKENIZER_FILES:
        raise UnsupportedCheckpointError(
            f"`dataset.txt_tok_name` must be one of {sorted(OFFICIAL_TOKENIZER_FILES)} (CharBPE tokenizers), "
            f"got {name!r}."
        )
    if tokenizer_dir is None:
        raise ValueError(
            "this stage-2 checkpoint is text-conditional: `--tokenizer_dir` must give the folder with the "
            f"official {OFFICIAL_TOKENIZER_FILES[name]}-vocab.json and {OFFICIAL_TOKENIZER_FILES[name]}-merges.txt "
            "(rqvae/txtimg_datasets/tokenizers/pretrained in the original repository), got None."
        )
    prefix = OFFICIAL_TOKENIZER_FILES[name]
    files = tuple(os.path.join(tokenizer_dir, f"{prefix}-{suffix}") for suffix in ("vocab.json", "merges.txt"))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"`--tokenizer_dir` {tokenizer_dir!r} must hold {missing} (for {name!r}).")
    return files[0], files[1]


def rq_transformer_kwargs_from_official(
    config: Mapping[str, Any], class_names: Optional[Sequence[str]] = None, text_pad_token_id: int = 0
) -> Dict[str, Any]:
    """Translate an official stage-2 config into ``RQTransformerConfig`` kwargs.

    ``vocab_size`` comes from ``arch.vocab_size`` or, as the official ``augment_defaults`` does, from
    ``dataset.vocab_size``. ``block_size_cond`` > 1 means text-conditional (``vocab_size_cond`` text tokens,
    loss weights ``loss.txt_weight`` / ``loss.img_weight``, padding id ``text_pad_token_id`` of the tokenizer);
    otherwise ``vocab_size_cond`` 0 or 1 means unconditional, larger means that many classes.
    """
    arch = _arch(config)
    vocab_size = arch.get("vocab_size", (config.get("dataset") or {}).get("vocab_size"))
    if isinstance(vocab_size, (list, tuple)):
        if len(set(vocab_size)) != 1:
            raise UnsupportedCheckpointError(
                f"one vocabulary size for all depths is needed, got {vocab_size}."
            )
        vocab_size = vocab_size[0]
    if not isinstance(vocab_size, int):
        raise ValueError(
            "stage-2 config must give `arch.vocab_size` or `dataset.vocab_size` (an int), "
            f"got {vocab_size!r}."
        )
    for flag in ("input_emb_vqvae", "head_emb_vqvae", "cumsum_depth_ctx", "shared_cls_emb"):
        if not arch.get(flag, False):
            raise UnsupportedCheckpointError(
                f"`arch.{flag}` must be true (as in every released checkpoint), got {arch.get(flag)!r}."
            )
    if arch.get("scaled_head_emb_vqvae", False) or arch.get("use_padding_emb", False):
        raise UnsupportedCheckpointError(
            "`arch.scaled_head_emb_vqvae` / `arch.use_padding_emb` are not supported."
        )
    body, head = dict(arch["body"]), dict(arch["head"])
    body_block, head_block = dict(body.get("block") or {}), dict(head.get("block") or {})
    defaults = {"mlp_bias": True, "attn_bias": True, "attn_pdrop": 0.0, "resid_pdrop": 0.1, "gelu": "v1"}
    for name, default in defaults.items():
        values = {body_block.get(name, default), head_block.get(name, default)}
        if name in ("mlp_bias", "attn_bias", "gelu") and values != {default}:
            raise UnsupportedCheckpointError(
                f"`arch.body/head.block.{name}` must be {default!r}, got {values}."
            )
    if body_block.get("n_head") != head_block.get("n_head"):
        raise UnsupportedCheckpointError(
            "body and head must have the same number of heads, got "
            f"{body_block.get('n_head')} and {head_block.get('n_head')}."
        )
    for name in ("embed_dim",):
        for block in (body_block, head_block):
            if name in block and block[name] != arch["embed_dim"]:
                raise UnsupportedCheckpointError(
                    f"block `{name}` must equal `arch.embed_dim` {arch['embed_dim']}."
                )
    vocab_size_cond = int(arch.get("vocab_size_cond", 0) or 0)
    text = is_text_conditional(config)
    num_classes = vocab_size_cond if vocab_size_cond > 1 and not text else None
    kwargs: Dict[str, Any] = {
        "vocab_size": vocab_size,
        "code_shape": list(arch["block_size"]),
        "hidden_size": arch["embed_dim"],
        "num_spatial_layers": body["n_layer"],
        "num_depth_layers": head["n_layer"],
        "num_attention_heads": body_block["n_head"],
        "intermediate_size": 4 * arch["embed_dim"],
        "resid_dropout": float(body_block.get("resid_pdrop", 0.1)),
        "attn_dropout": float(body_block.get("attn_pdrop", 0.0)),
        "embd_dropout": float(arch.get("embd_pdrop", 0.0)),
        "num_classes": num_classes,
        "class_dropout_prob": 0.0,
        "code_embedding_dim": arch["input_embed_dim"],
        "layer_norm_eps": 1e-5,
    }
    if text:
        loss = config.get("loss") or {}
        kwargs.update(
            text_vocab_size=vocab_size_cond,
            max_text_length=int(arch["block_size_cond"]),
            text_pad_token_id=int(text_pad_token_id),
            text_loss_weight=float(loss.get("txt_weight", 0.1)),
            image_loss_weight=float(loss.get("img_weight", 0.9)),
            caption_dropout_prob=0.0,
        )
    if num_classes is not None:
        names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(
                f"`class_names` must have {num_classes} entries (vocab_size_cond), got {len(names)}."
            )
        kwargs["id2label"] = {i: str(name) for i, name in enumerate(names)}
    return kwargs


def convert_rq_transformer_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    codebook: torch.Tensor,
    class_names: Optional[Sequence[str]] = None,
    text_pad_token_id: int = 0,
) -> Tuple[Dict[str, Any], StateDict]:
    """Convert an official RQ-Transformer state dict; return ``(RQTransformerConfig kwargs, state dict)``.

    ``codebook`` is the (K, input_embed_dim) stage-1 codebook without its padding row (the official model
    embeds codes with the RQ-VAE codebook; here it becomes ``code_embeddings.weight``). Everything else is a
    rename (a text model's ``cond_classifier`` becomes ``text_output_norm`` / ``text_output_proj``), except that
    a class-conditional model gets one extra condition row, the null class of classifier-free guidance, which
    the official model (trained without class dropout) does not have: it is filled with the mean of the class
    embeddings. Raises :class:`CheckpointMismatchError` listing every unused source key and unfilled target key.
    """
    from ..models.configuration_rq_transformer import RQTransformerConfig
    from ..models.modeling_rq_transformer import RQTransformerForCausalImageModeling

    kwargs = rq_transformer_kwargs_from_official(config, class_names, text_pad_token_id)
    source = _Source(state_dict)
    converted: StateDict = {}
    for key in state_dict:
        if key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = source.take(key)
            continue
        m = re.fullmatch(r"(body|head)_transformer\.blocks\.(\d+)\.(\w+(?:\.\w+)?)\.(weight|bias)", key)
        if m and m[3] in _BLOCK_PARTS:
            stack = "spatial_transformer" if m[1] == "body" else "depth_transformer"
            converted[f"{stack}.layers.{m[2]}.{_BLOCK_PARTS[m[3]]}.{m[4]}"] = source.take(key)
    if "cond_emb.weight" in source:
        cond = source.take("cond_emb.weight")
        if kwargs["num_classes"] is not None:
            if cond.shape[0] != kwargs["num_classes"]:
                raise CheckpointMismatchError(
                    f"`cond_emb.weight` must have vocab_size_cond = {kwargs['num_classes']} rows, "
                    f"got shape {tuple(cond.shape)}."
                )
            cond = torch.cat([cond, cond.mean(dim=0, keepdim=True)])  # null class for guidance
        converted["condition_embedding.weight"] = cond
    if codebook is not None:
        converted["code_embeddings.weight"] = codebook
    expected = _meta_state_dict(lambda: RQTransformerForCausalImageModeling(RQTransformerConfig(**kwargs)))
    check_state_dicts("RQ-Transformer (stage 2)", source.unused(), converted, expected)
    return kwargs, converted


# --------------------------------------------------------------------------------------------------------
# class names, model card, folder
# --------------------------------------------------------------------------------------------------------


def read_class_names(path: str) -> List[str]:
    """Read class names from ``path``: a JSON list or ``{id: name}`` dict, a text file with one name per line,
    or a YAML ``{name: id}`` map such as the official ``rqvae/metrics/assets/wnid_to_idx.yaml``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`class_names` must be an existing file, got {path!r}.")
    ext = os.path.splitext(path)[1].lower()
    with open(path) as fh:
        if ext == ".json":
            data = json.load(fh)
        elif ext in (".yaml", ".yml"):
            import yaml

            data = {name: idx for name, idx in yaml.safe_load(fh).items()}
            data = {int(idx): str(name) for name, idx in data.items()}
        else:
            return [line.strip() for line in fh if line.strip()]
    if isinstance(data, list):
        return [str(n) for n in data]
    if isinstance(data, dict):
        items = {int(k): str(v) for k, v in data.items()}
        if sorted(items) != list(range(len(items))):
            raise ValueError(f"`class_names` ids in {path} must be 0..N-1, got {sorted(items)[:5]}...")
        return [items[i] for i in range(len(items))]
    raise ValueError(f"`class_names` file {path} must hold a list or a dict, got {type(data).__name__}.")


def model_card_kwargs(
    checkpoint_name: str,
    stage1_config: Mapping[str, Any],
    stage2_config: Optional[Mapping[str, Any]],
    transformer_kwargs: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    """What the model card of a converted folder adds to the usual one (`build_model_card` keyword arguments):
    the weights' licence and the conversion notes."""
    hp = _arch(stage1_config)["hparams"]
    dataset = (stage1_config.get("dataset") or {}).get("type", "unknown")
    h, w, depth = hp["code_shape"]
    conditional = transformer_kwargs is not None and transformer_kwargs.get("num_classes") is not None
    text = transformer_kwargs is not None and transformer_kwargs.get("text_vocab_size") is not None
    notes = [
        f"- Converted from the official release `{checkpoint_name}` of [kakaobrain/rq-vae-transformer]"
        f"({ORIGINAL_REPO}) with `python -m rq_hf.conversion.convert_original`; tensors are renamed, "
        "not changed.",
        f"- Dataset: {dataset}; codes {h}x{w}x{depth}, codebook size {hp['n_embed']}.",
        "- The codebook's padding row (index K of the official K + 1 rows) is dropped.",
    ]
    if conditional:
        notes.append(
            f"- Class-conditional ({transformer_kwargs['num_classes']} classes). The official model was "
            "trained without class dropout, so it has no null class: the null-class embedding used by "
            "classifier-free guidance is the mean class embedding, and guidance_scale > 1 is only an "
            "approximation. "
            "Class names are in `transformer/config.json` (`id2label`)."
        )
    if text:
        notes.append(
            "- Text-conditional: captions are lowercased and tokenized by the official BPE tokenizer "
            f"(`tokenizer/`, from the original repository's vocabulary and merges files) into "
            f"{transformer_kwargs['max_text_length']} tokens ([PAD]-padded, truncated), as in the original "
            "code. The official model was trained without caption dropout: classifier-free guidance "
            "(guidance_scale > 1, the empty caption or a negative prompt as the unconditional branch) is only "
            "an approximation; the original sampling uses no guidance."
        )
    if stage2_config is not None:
        sampling = (
            stage2_config.get("sampling") or (stage2_config.get("experiment") or {}).get("sample") or {}
        )
        if sampling:
            notes.append(f"- Official sampling settings: {dict(sampling)}.")
    license_text = (
        "The weights are released by Kakao Brain under the **Creative Commons Attribution-NonCommercial-ShareAlike "
        "4.0 International licence (CC-BY-NC-SA-4.0)**: no commercial use; derivatives must be shared under the "
        "same licence, with attribution. The original code is Apache-2.0; rq-hf is Apache-2.0."
    )
    return {
        "license": WEIGHTS_LICENSE,
        "extra_tags": ["residual-quantization"],
        "sections": {"License": license_text, "Conversion notes": "\n".join(notes)},
    }


def _find_stage(checkpoint_dir: str, stage: str) -> Optional[Tuple[str, str]]:
    stage_dir = os.path.join(checkpoint_dir, stage)
    model, config = os.path.join(stage_dir, "model.pt"), os.path.join(stage_dir, "config.yaml")
    if os.path.isfile(model) and os.path.isfile(config):
        return model, config
    if os.path.isdir(stage_dir):
        raise FileNotFoundError(f"{stage_dir} must hold model.pt and config.yaml (official release layout).")
    return None


def convert_checkpoint_dir(
    checkpoint_dir: str,
    output_dir: str,
    *,
    allow_pickle: bool = False,
    stage1_only: bool = False,
    class_names: Optional[Sequence[str]] = None,
    use_ema: bool = False,
    overwrite: bool = False,
    tokenizer_dir: Optional[str] = None,
) -> str:
    """Convert an extracted release folder; return "pipeline" or "rqvae" (what was written to ``output_dir``).

    ``output_dir`` receives an ``RQTransformerPipeline`` folder (``model_index.json``, ``vqvae/``,
    ``transformer/``, README.md, and ``tokenizer/`` for a text model) when the release has a ``stage2/``, else
    an ``RQVAEModel`` folder. A text-conditional release needs ``tokenizer_dir``, the folder with the official
    tokenizer files (see :func:`official_tokenizer_files`). The folder is written to a temporary sibling and
    renamed at the end, so a failed conversion leaves nothing behind.
    """
    from ..models.autoencoder_rqvae import RQVAEModel

    stage1 = _find_stage(checkpoint_dir, "stage1")
    if stage1 is None:
        raise FileNotFoundError(
            f"`checkpoint_dir` must contain stage1/model.pt and stage1/config.yaml, got {checkpoint_dir!r}."
        )
    stage2 = None if stage1_only else _find_stage(checkpoint_dir, "stage2")
    if os.path.exists(output_dir) and not overwrite and os.listdir(output_dir):
        raise FileExistsError(
            f"`output_dir` {output_dir!r} exists and is not empty; pass --overwrite to replace it."
        )
    if use_ema and stage2 is None:
        raise ValueError(
            "`--use_ema` selects the EMA weights of stage 2 (the official sampling pairs them with the plain "
            "RQ-VAE), but nothing of stage 2 is converted here (--stage1_only, or no stage2/ folder)."
        )

    config1 = load_official_config(stage1[1])
    config2 = load_official_config(stage2[1]) if stage2 else None
    tokenizer = None
    if config2 is not None:
        if is_text_conditional(config2):  # before reading gigabytes of weights
            from ..models.tokenization_rq_transformer import load_bpe_caption_tokenizer

            vocab_file, merges_file = official_tokenizer_files(config2, tokenizer_dir)
            length = int(_arch(config2)["block_size_cond"])
            tokenizer = load_bpe_caption_tokenizer(vocab_file, merges_file, length)
            vocab_size_cond = int(_arch(config2).get("vocab_size_cond", 0))
            if len(tokenizer) > vocab_size_cond:
                raise CheckpointMismatchError(
                    f"the tokenizer in `--tokenizer_dir` {tokenizer_dir!r} has {len(tokenizer)} tokens, more than the "
                    f"model's vocab_size_cond {vocab_size_cond}: it is not this model's tokenizer."
                )
        if not _arch(config1)["hparams"].get("shared_codebook", False):
            raise UnsupportedCheckpointError(
                "the RQ-Transformer embeds codes with one RQ-VAE codebook; this RQ-VAE has one codebook per "
                "depth (`shared_codebook: false`)."
            )
    vae_kwargs, vae_sd = convert_rqvae_state_dict(
        load_official_checkpoint(stage1[0], allow_pickle, "state_dict"), config1
    )
    vae = build_model(RQVAEModel, vae_kwargs, vae_sd)

    transformer = tr_kwargs = None
    if config2 is not None:
        from ..models.configuration_rq_transformer import RQTransformerConfig
        from ..models.modeling_rq_transformer import RQTransformerForCausalImageModeling

        codebook = vae_sd["quantizer.embed"][0].clone()
        tr_kwargs, tr_sd = convert_rq_transformer_state_dict(
            load_official_checkpoint(stage2[0], allow_pickle, "state_dict_ema" if use_ema else "state_dict"),
            config2,
            codebook,
            class_names,
            text_pad_token_id=0 if tokenizer is None else tokenizer.pad_token_id,
        )
        if tr_kwargs["vocab_size"] != vae_kwargs["codebook_size"]:
            raise CheckpointMismatchError(
                f"stage-2 vocab_size {tr_kwargs['vocab_size']} must equal the stage-1 codebook size "
                f"{vae_kwargs['codebook_size']}."
            )
        transformer = build_model(
            RQTransformerForCausalImageModeling, RQTransformerConfig(**tr_kwargs), tr_sd
        )

    name = os.path.basename(os.path.normpath(checkpoint_dir))
    card_kwargs = model_card_kwargs(name, config1, config2, tr_kwargs)
    with atomic_save_directory(output_dir, replace="all") as tmp:  # all or nothing, old folder kept on failure
        if transformer is None:
            written = "rqvae"
            vae.save_pretrained(tmp, model_card_kwargs=card_kwargs)
        else:
            from ..pipelines.pipeline_rq_transformer import RQTransformerPipeline

            written = "pipeline"
            pipeline = RQTransformerPipeline(vqvae=vae, transformer=transformer, tokenizer=tokenizer)
            pipeline.save_pretrained(tmp, model_card_kwargs=card_kwargs)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The converter's command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m rq_hf.conversion.convert_original",
        description="Convert an official RQ-VAE / RQ-Transformer release folder (stage1/, stage2/) to rq-hf.",
    )
    parser.add_argument(
        "--checkpoint_dir", required=True, help="extracted release folder with stage1/ (+ stage2/)"
    )
    parser.add_argument("--output_dir", required=True, help="folder to write (pipeline, or RQ-VAE only)")
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="load model.pt with full unpickling when weights_only loading fails (runs code stored in the "
        "file: only for files you trust)",
    )
    parser.add_argument("--stage1_only", action="store_true", help="convert only the RQ-VAE (stage1/)")
    parser.add_argument(
        "--class_names",
        default=None,
        help="class names of a class-conditional model: .json list/dict, .txt (one per line) or a .yaml "
        "{name: id} map (e.g. the official wnid_to_idx.yaml); default: the class ids",
    )
    parser.add_argument(
        "--use_ema",
        action="store_true",
        help="convert stage 2's `state_dict_ema` instead of its `state_dict` (the RQ-VAE is always the plain "
        "`state_dict`, as the official sampling uses it)",
    )
    parser.add_argument(
        "--tokenizer_dir",
        default=None,
        help="text-conditional releases: the folder with the official bpe-16k-vocab.json and bpe-16k-merges.txt "
        "(rqvae/txtimg_datasets/tokenizers/pretrained in the original repository)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--push_to_hub", action="store_true", help="upload the converted folder to the Hub")
    parser.add_argument("--hub_model_id", default=None, help="repository id for --push_to_hub (user/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


def _parse_args(argv: Optional[Iterable[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    return args


def main(argv: Optional[Iterable[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    class_names = read_class_names(args.class_names) if args.class_names else None
    written = convert_checkpoint_dir(
        args.checkpoint_dir,
        args.output_dir,
        allow_pickle=args.allow_pickle,
        stage1_only=args.stage1_only,
        class_names=class_names,
        use_ema=args.use_ema,
        overwrite=args.overwrite,
        tokenizer_dir=args.tokenizer_dir,
    )
    kind = "an RQTransformerPipeline" if written == "pipeline" else "an RQVAEModel"
    print(f"wrote {kind} folder to {args.output_dir}")
    if args.push_to_hub:
        from ..models.hub_utils import push_folder_to_hub

        commit = push_folder_to_hub(args.output_dir, args.hub_model_id, private=args.private,
                                    commit_message="Convert official RQ-VAE weights")
        print(commit)
    return 0


if __name__ == "__main__":
    from ..training.script_utils import run_cli

    # bad flags or inputs (missing folders, corrupt or unsafe files): a usage line and the message, no traceback
    run_cli(main, build_parser, errors=(UnsafeCheckpointError, UnsupportedCheckpointError))
