"""Test helper: checkpoints in the layout of the official kakaobrain/rq-vae-transformer releases.

A release tarball extracts to ``<name>/stage1/{model.pt, config.yaml}`` and
``<name>/stage2/{model.pt, config.yaml}``; ``torch.load(model.pt)["state_dict"]`` holds the weights.
The functions below build such folders for tiny configurations, with random (generator-seeded)
tensors whose names and shapes follow the official module construction exactly:

Stage 1 (``rqvae/models/rqvae/{rqvae,modules,layers,quantizations}.py``)::

    encoder.conv_in.{weight (ch, in_channels, 3, 3), bias}
    encoder.down.<level>.block.<j>.{norm1, conv1, norm2, conv2[, nin_shortcut]}.{weight, bias}
    encoder.down.<level>.attn.<j>.{norm, q, k, v, proj_out}.{weight, bias}   (q/k/v/proj_out: 1x1 convs)
    encoder.down.<level>.downsample.conv.{weight, bias}                      (all levels but the last)
    encoder.mid.{block_1, attn_1, block_2}.*
    encoder.{norm_out, conv_out}.{weight, bias}                              (conv_out: z_channels out)
    decoder.conv_in, decoder.mid.*, decoder.{norm_out, conv_out}
    decoder.up.<level>.block.<j>.*  (num_res_blocks + 1 blocks), .attn.<j>.*, .upsample.conv.*
        (indexed by resolution level: up.0 is the full-resolution level)
    quant_conv.{weight (embed_dim, z_channels, 1, 1), bias}
    post_quant_conv.{weight (z_channels, embed_dim, 1, 1), bias}
    quantizer.codebooks.<d>.weight (n_embed + 1, embed_dim)   (last row: zero padding row)
    quantizer.codebooks.<d>.cluster_size_ema (n_embed,)
    quantizer.codebooks.<d>.embed_ema (n_embed, embed_dim)
        (shared_codebook: the same tensors under every <d>)

Stage 2 (``rqvae/models/rqtransformer/{transformers,attentions,primitives}.py``), E = embed_dim::

    cond_emb.weight (max(vocab_size_cond, 1), E)
    input_mlp.{weight (E, input_embed_dim), bias}      (input_emb_vqvae)
    head_mlp.{weight (E, input_embed_dim), bias}       (head_emb_vqvae)
    tok_emb.weight (+ tok_emb.offsets)                 (only when not both *_emb_vqvae)
    pos_emb_cond (1, max(block_size_cond, 1), E), pos_emb_hw (1, h*w, E), pos_emb_d (1, D, E)
    {body,head}_transformer.blocks.<i>.{ln1, ln2}.{weight, bias}
    {body,head}_transformer.blocks.<i>.attn.{key, query, value, proj}.{weight (E, E), bias}
    {body,head}_transformer.blocks.<i>.mlp.0.{weight (4E, E), bias}, mlp.2.{weight (E, 4E), bias}
    classifier.layer_norm.{weight, bias}
    classifier.linear.{weight (K, E), bias (K,)}       (shared_cls_emb; else BatchLinear (D, E, K), (D, K))
    cond_classifier.{layer_norm, linear}.*             (only when block_size_cond > 1: text conditioning)
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Tuple

import torch
import yaml

StateDict = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# configs (the schema of the official config.yaml files)
# ----------------------------------------------------------------------------------------------------------


def official_rqvae_config(
    *,
    n_embed: int = 16,
    embed_dim: int = 8,
    code_depth: int = 3,
    shared_codebook: bool = True,
    ch: int = 32,
    ch_mult: Tuple[int, ...] = (1, 1, 2),
    num_res_blocks: int = 1,
    attn_resolutions: Tuple[int, ...] = (4,),
    z_channels: int = 8,
    resolution: int = 16,
    dataset_type: str = "imagenet",
) -> Dict[str, Any]:
    """Return a stage-1 ``config.yaml`` dict in the official schema (``arch.hparams`` + ``arch.ddconfig``).

    The defaults describe a tiny model: 16px images, 3 levels (down factor 4), 4x4 latents with attention
    at the 4x4 level, codes 4x4xD.
    """
    latent = resolution // 2 ** (len(ch_mult) - 1)
    return {
        "dataset": {"type": dataset_type, "transforms": {"type": f"{dataset_type}{resolution}x{resolution}"}},
        "arch": {
            "type": "rq-vae",
            "code_hier": 1,
            "hparams": {
                "bottleneck_type": "rq",
                "embed_dim": embed_dim,
                "n_embed": n_embed,
                "latent_shape": [latent, latent, embed_dim],
                "code_shape": [latent, latent, code_depth],
                "shared_codebook": shared_codebook,
                "decay": 0.99,
                "restart_unused_codes": True,
                "loss_type": "mse",
                "latent_loss_weight": 0.25,
            },
            "ddconfig": {
                "double_z": False,
                "z_channels": z_channels,
                "resolution": resolution,
                "in_channels": 3,
                "out_ch": 3,
                "ch": ch,
                "ch_mult": list(ch_mult),
                "num_res_blocks": num_res_blocks,
                "attn_resolutions": list(attn_resolutions),
                "dropout": 0.0,
            },
            "checkpointing": True,
        },
        "optimizer": {"type": "adam", "init_lr": 4.0e-5, "weight_decay": 0.0, "betas": [0.5, 0.9]},
        "experiment": {"batch_size": 32, "epochs": 10, "save_ckpt_freq": 5, "test_freq": 1},
    }


def official_rq_transformer_config(
    stage1_config: Dict[str, Any],
    *,
    kind: str = "class",
    num_classes: int = 10,
    embed_dim: int = 32,
    n_head: int = 4,
    body_layers: int = 2,
    head_layers: int = 1,
    text_vocab_size: int = 64,
    text_length: int = 6,
) -> Dict[str, Any]:
    """Return a stage-2 ``config.yaml`` dict in the official schema for ``kind``.

    ``kind="class"``: ImageNet-like, ``vocab_size_cond = num_classes`` (the official ImageNet models have
    exactly 1000 rows: there is no null class), ``block_size_cond = 1``.
    ``kind="uncond"``: FFHQ/LSUN-like, ``vocab_size_cond = 1`` (``cond_emb`` is the start token).
    ``kind="text"``: CC-3M-like, ``vocab_size_cond`` = text vocabulary, ``block_size_cond`` = text length.
    """
    hparams = stage1_config["arch"]["hparams"]
    vocab_size = hparams["n_embed"]
    if kind == "class":
        dataset = {"type": "imagenet", "vocab_size": vocab_size, "transforms": {"type": "imagenet256x256"}}
        vocab_size_cond, block_size_cond = num_classes, 1
    elif kind == "uncond":
        dataset = {"type": "ffhq", "vocab_size": vocab_size, "transforms": {"type": "ffhq256x256"}}
        vocab_size_cond, block_size_cond = 1, 1
    elif kind == "text":
        dataset = {
            "dataset": "cc3m",
            "txt_tok_name": "bpe16k_huggingface",
            "vocab_size_txt": text_vocab_size,
            "vocab_size": vocab_size,
            "image_resolution": 256,
            "context_length": text_length,
            "transforms": "dalle-vqvae",
            "bpe_dropout": 0.1,
        }
        vocab_size_cond, block_size_cond = text_vocab_size, text_length
    else:
        raise ValueError(f"kind must be one of 'class', 'uncond', 'text', got {kind!r}")
    return {
        "dataset": dataset,
        "arch": {
            "type": "rq-transformer",
            "block_size": list(hparams["code_shape"]),
            "embed_dim": embed_dim,
            "input_embed_dim": hparams["embed_dim"],
            "shared_tok_emb": True,
            "shared_cls_emb": True,
            "input_emb_vqvae": True,
            "head_emb_vqvae": True,
            "cumsum_depth_ctx": True,
            "vocab_size_cond": vocab_size_cond,
            "block_size_cond": block_size_cond,
            "body": {"n_layer": body_layers, "block": {"n_head": n_head}},
            "head": {"n_layer": head_layers, "block": {"n_head": n_head}},
        },
        "loss": {
            "type": "soft_target_cross_entropy",
            "stochastic_codes": True,
            "temp": 0.5,
            **({"txt_weight": 0.1, "img_weight": 0.9} if kind == "text" else {}),
        },
        "optimizer": {"type": "adamW", "init_lr": 0.0005, "weight_decay": 0.0001, "betas": [0.9, 0.95]},
        "experiment": {
            "amp": True,
            "batch_size": 8,
            "epochs": 1,
            "sample": {"top_k": vocab_size, "top_p": 0.92},
        },
        "sampling": {"temp": 1.0, "top_k": vocab_size, "top_p": 0.92},
    }


# ----------------------------------------------------------------------------------------------------------
# state dicts with the official names and shapes
# ----------------------------------------------------------------------------------------------------------


class _Filler:
    """Random tensors from one generator, scaled so that a forward pass stays numerically tame."""

    def __init__(self, generator: torch.Generator):
        self.g = generator

    def weight(self, *shape: int) -> torch.Tensor:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return torch.randn(*shape, generator=self.g) / max(fan_in, 1) ** 0.5

    def bias(self, n: int) -> torch.Tensor:
        return 0.02 * torch.randn(n, generator=self.g)

    def norm_weight(self, n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=self.g)

    def normal(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return std * torch.randn(*shape, generator=self.g)


def _norm(sd: StateDict, f: _Filler, prefix: str, c: int) -> None:
    sd[f"{prefix}.weight"] = f.norm_weight(c)
    sd[f"{prefix}.bias"] = f.bias(c)


def _conv(sd: StateDict, f: _Filler, prefix: str, c_out: int, c_in: int, k: int) -> None:
    sd[f"{prefix}.weight"] = f.weight(c_out, c_in, k, k)
    sd[f"{prefix}.bias"] = f.bias(c_out)


def _linear(sd: StateDict, f: _Filler, prefix: str, c_out: int, c_in: int) -> None:
    sd[f"{prefix}.weight"] = f.weight(c_out, c_in)
    sd[f"{prefix}.bias"] = f.bias(c_out)


def _resnet(sd: StateDict, f: _Filler, prefix: str, c_in: int, c_out: int) -> None:
    # layers.ResnetBlock with temb_channels=0 (no temb_proj) and conv_shortcut=False.
    _norm(sd, f, f"{prefix}.norm1", c_in)
    _conv(sd, f, f"{prefix}.conv1", c_out, c_in, 3)
    _norm(sd, f, f"{prefix}.norm2", c_out)
    _conv(sd, f, f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        _conv(sd, f, f"{prefix}.nin_shortcut", c_out, c_in, 1)


def _attn(sd: StateDict, f: _Filler, prefix: str, c: int) -> None:
    # layers.AttnBlock: GroupNorm + four 1x1 convolutions.
    _norm(sd, f, f"{prefix}.norm", c)
    for name in ("q", "k", "v", "proj_out"):
        _conv(sd, f, f"{prefix}.{name}", c, c, 1)


def official_rqvae_state_dict(config: Dict[str, Any], generator: torch.Generator) -> StateDict:
    """Build the state dict of the official ``RQVAE`` for a stage-1 ``config`` (random values).

    Mirrors the construction loops of ``modules.Encoder``/``Decoder`` and ``quantizations.RQBottleneck``.
    In the shared-codebook case every depth's entries are the very same tensors, as in
    ``nn.ModuleList([codebook0] * D).state_dict()``.
    """
    f = _Filler(generator)
    hp, dd = config["arch"]["hparams"], config["arch"]["ddconfig"]
    ch, ch_mult, nrb = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"]
    attn_res, z = list(dd["attn_resolutions"]), dd["z_channels"]
    n_levels = len(ch_mult)
    in_ch_mult = (1,) + tuple(ch_mult)
    sd: StateDict = {}

    # encoder
    _conv(sd, f, "encoder.conv_in", ch, dd["in_channels"], 3)
    curr_res = dd["resolution"]
    block_in = ch
    for i in range(n_levels):
        block_in = ch * in_ch_mult[i]
        block_out = ch * ch_mult[i]
        for j in range(nrb):
            _resnet(sd, f, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if curr_res in attn_res:
                _attn(sd, f, f"encoder.down.{i}.attn.{j}", block_in)
        if i != n_levels - 1:
            _conv(sd, f, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            curr_res //= 2
    _resnet(sd, f, "encoder.mid.block_1", block_in, block_in)
    _attn(sd, f, "encoder.mid.attn_1", block_in)
    _resnet(sd, f, "encoder.mid.block_2", block_in, block_in)
    _norm(sd, f, "encoder.norm_out", block_in)
    _conv(sd, f, "encoder.conv_out", z, block_in, 3)

    # decoder
    block_in = ch * ch_mult[-1]
    curr_res = dd["resolution"] // 2 ** (n_levels - 1)
    _conv(sd, f, "decoder.conv_in", block_in, z, 3)
    _resnet(sd, f, "decoder.mid.block_1", block_in, block_in)
    _attn(sd, f, "decoder.mid.attn_1", block_in)
    _resnet(sd, f, "decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(n_levels)):
        block_out = ch * ch_mult[i]
        for j in range(nrb + 1):
            _resnet(sd, f, f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if curr_res in attn_res:
                _attn(sd, f, f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            _conv(sd, f, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            curr_res *= 2
    _norm(sd, f, "decoder.norm_out", block_in)
    _conv(sd, f, "decoder.conv_out", dd["out_ch"], block_in, 3)

    # quantizer (VQEmbedding: n_embed + 1 rows, the last one is padding_idx and stays zero)
    latent_shape, code_shape = hp["latent_shape"], hp["code_shape"]
    code_dim = (latent_shape[0] * latent_shape[1]) // (code_shape[0] * code_shape[1]) * latent_shape[2]
    n_embed, depth = hp["n_embed"], code_shape[2]

    def codebook() -> Dict[str, torch.Tensor]:
        weight = f.normal(n_embed + 1, code_dim)
        weight[-1] = 0.0
        return {
            "weight": weight,
            "cluster_size_ema": f.normal(n_embed).abs() + 1.0,
            "embed_ema": f.normal(n_embed, code_dim),
        }

    shared = codebook() if hp["shared_codebook"] else None
    for d in range(depth):
        entries = shared if shared is not None else codebook()
        for name, tensor in entries.items():
            sd[f"quantizer.codebooks.{d}.{name}"] = tensor

    _conv(sd, f, "quant_conv", hp["embed_dim"], z, 1)
    _conv(sd, f, "post_quant_conv", z, hp["embed_dim"], 1)
    return sd


def _block(sd: StateDict, f: _Filler, prefix: str, e: int) -> None:
    # attentions.AttentionBlock (attn_bias = mlp_bias = True, the official default).
    _norm(sd, f, f"{prefix}.ln1", e)
    _norm(sd, f, f"{prefix}.ln2", e)
    for name in ("key", "query", "value", "proj"):
        _linear(sd, f, f"{prefix}.attn.{name}", e, e)
    _linear(sd, f, f"{prefix}.mlp.0", 4 * e, e)
    _linear(sd, f, f"{prefix}.mlp.2", e, 4 * e)


def official_rq_transformer_state_dict(config: Dict[str, Any], generator: torch.Generator) -> StateDict:
    """Build the state dict of the official ``RQTransformer`` for a stage-2 ``config`` (random values)."""
    f = _Filler(generator)
    arch = config["arch"]
    e = arch["embed_dim"]
    h, w, depth = arch["block_size"]
    vocab = arch.get("vocab_size", config["dataset"]["vocab_size"])
    vocab_cond = max(arch.get("vocab_size_cond", 0), 1)
    block_cond = max(arch.get("block_size_cond", 0), 1)
    input_vqvae, head_vqvae = arch.get("input_emb_vqvae", False), arch.get("head_emb_vqvae", False)
    sd: StateDict = {}

    sd["cond_emb.weight"] = f.normal(vocab_cond, e, std=0.02)
    if input_vqvae:
        _linear(sd, f, "input_mlp", e, arch["input_embed_dim"])
    if head_vqvae:
        _linear(sd, f, "head_mlp", e, arch["input_embed_dim"])
    if not (input_vqvae and head_vqvae):
        if arch.get("shared_tok_emb", False):
            sd["tok_emb.weight"] = f.normal(vocab, e, std=0.02)
        else:
            sd["tok_emb.weight"] = f.normal(vocab * depth, e, std=0.02)
            sd["tok_emb.offsets"] = torch.arange(depth, dtype=torch.long) * vocab
    sd["pos_emb_cond"] = f.normal(1, block_cond, e, std=0.02)
    sd["pos_emb_hw"] = f.normal(1, h * w, e, std=0.02)
    sd["pos_emb_d"] = f.normal(1, depth, e, std=0.02)
    for stack in ("body", "head"):
        for i in range(arch[stack]["n_layer"]):
            _block(sd, f, f"{stack}_transformer.blocks.{i}", e)
    _norm(sd, f, "classifier.layer_norm", e)
    if arch.get("shared_cls_emb", False):
        _linear(sd, f, "classifier.linear", vocab, e)
    else:
        sd["classifier.linear.weight"] = f.normal(depth, e, vocab, std=0.02)
        sd["classifier.linear.bias"] = f.normal(depth, vocab, std=0.02)
    if arch.get("block_size_cond", 0) > 1:
        _norm(sd, f, "cond_classifier.layer_norm", e)
        _linear(sd, f, "cond_classifier.linear", arch["vocab_size_cond"], e)
    return sd


# ----------------------------------------------------------------------------------------------------------
# release folders
# ----------------------------------------------------------------------------------------------------------


def write_stage(stage_dir: str, config: Dict[str, Any], state_dict: StateDict, **extra: Any) -> str:
    """Write ``stage_dir/{model.pt, config.yaml}`` as a release does; ``extra`` goes beside "state_dict".

    Returns the path of ``model.pt``.
    """
    os.makedirs(stage_dir, exist_ok=True)
    with open(os.path.join(stage_dir, "config.yaml"), "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    path = os.path.join(stage_dir, "model.pt")
    torch.save({"state_dict": state_dict, **extra}, path)
    return path


def write_official_release(
    root: str,
    *,
    stage2_kind: Optional[str] = "class",
    seed: int = 0,
    stage1_kwargs: Optional[Dict[str, Any]] = None,
    stage2_kwargs: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write a tiny release folder ``root/stage1`` (+ ``root/stage2`` unless ``stage2_kind`` is None).

    ``stage2_kind`` is "class" (ImageNet-like), "uncond" (FFHQ-like) or "text" (CC-3M-like).
    Returns ``{"stage1_config", "stage1_state_dict", "stage2_config", "stage2_state_dict"}`` (deep copies
    of what was written) so that a test can compare converted tensors with the originals.
    """
    g = torch.Generator().manual_seed(seed)
    cfg1 = official_rqvae_config(**(stage1_kwargs or {}))
    sd1 = official_rqvae_state_dict(cfg1, g)
    write_stage(os.path.join(root, "stage1"), cfg1, sd1)
    out: Dict[str, Any] = {"stage1_config": copy.deepcopy(cfg1), "stage1_state_dict": dict(sd1)}
    out["stage2_config"] = out["stage2_state_dict"] = None
    if stage2_kind is not None:
        cfg2 = official_rq_transformer_config(cfg1, kind=stage2_kind, **(stage2_kwargs or {}))
        sd2 = official_rq_transformer_state_dict(cfg2, g)
        write_stage(os.path.join(root, "stage2"), cfg2, sd2)
        out["stage2_config"], out["stage2_state_dict"] = copy.deepcopy(cfg2), dict(sd2)
    return out


class ArbitraryObject:
    """A class that ``torch.load(weights_only=True)`` refuses to unpickle (stands for untrusted code)."""

    def __init__(self, payload: str = "not a tensor"):
        self.payload = payload


def write_pickled_object_checkpoint(stage_dir: str, config: Dict[str, Any], state_dict: StateDict) -> str:
    """Write a ``model.pt`` that also holds an arbitrary pickled object (needs full unpickling)."""
    return write_stage(stage_dir, config, state_dict, extra_object=ArbitraryObject())


# ----------------------------------------------------------------------------------------------------------
# caption tokenizer of the text-conditional releases
# ----------------------------------------------------------------------------------------------------------


def write_official_tokenizer_files(folder: str, captions, vocab_size: int, prefix: str = "bpe-16k") -> None:
    """Write ``folder/<prefix>-vocab.json`` and ``<prefix>-merges.txt`` as the official tokenizer files are: a
    ``tokenizers`` ``CharBPETokenizer`` (lowercase) trained with ``[PAD]`` (id 0) and ``[UNK]`` (id 1) first."""
    from tokenizers import CharBPETokenizer

    tokenizer = CharBPETokenizer(unk_token="[UNK]", lowercase=True)
    tokenizer.train_from_iterator(
        captions, vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"], show_progress=False
    )
    os.makedirs(folder, exist_ok=True)
    tokenizer.save_model(folder, prefix)


def official_caption_tokenizer(folder: str, context_length: int, prefix: str = "bpe-16k"):
    """The caption tokenizer as ``rqvae/txtimg_datasets/cc3m.py`` builds it (``bpe16k_huggingface``): call
    ``.encode(text).ids`` for the ``context_length`` padded / truncated token ids."""
    from tokenizers import CharBPETokenizer

    tokenizer = CharBPETokenizer.from_file(
        os.path.join(folder, f"{prefix}-vocab.json"),
        os.path.join(folder, f"{prefix}-merges.txt"),
        unk_token="[UNK]",
        lowercase=True,
        dropout=None,
    )
    tokenizer.add_special_tokens(["[PAD]"])
    tokenizer.enable_padding(length=context_length, pad_id=tokenizer.token_to_id("[PAD]"))
    tokenizer.enable_truncation(max_length=context_length)
    return tokenizer
