#!/usr/bin/env python
"""Train (or fine-tune) an RQ-Transformer on the codes of a frozen RQ-VAE with accelerate: stage 2.

Runs as ``python examples/train_rq_transformer.py ...``, ``accelerate launch ...`` on one or many processes,
or ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train_rq_transformer.py ...`` for two real
CPU processes; sharded (FSDP2, DeepSpeed ZeRO) with ``accelerate launch --config_file examples/configs/fsdp.yaml``
(``rq_hf.training.sharding``). Example (the Fashion-MNIST quickstart model, offline, class-conditional)::

    python examples/train_rq_transformer.py --vqvae_model_name_or_path rqvae-fmnist \\
        --dataset_name fashion_mnist --label_column label --validation_split test \\
        --output_dir rq-transformer-fmnist --train_batch_size 64 --max_train_steps 700 \\
        --learning_rate 1e-3 --mixed_precision bf16

Data, one of:

- ``--codes_dataset``: a ``save_to_disk`` dataset made by ``examples/extract_codes.py`` (columns ``codes``
  (h, w, D) and ``label``); a ``DatasetDict`` gives its ``train`` split (and ``--validation_split``);
- the image-dataset flags of ``train_rqvae.py`` (``--dataset_name``, ``--train_data_dir``, ...): images are
  encoded on the fly by the frozen RQ-VAE (``--dataset_name fashion_mnist`` reads the Debian package's files
  offline and pads 28x28 to 32x32).

``--label_column`` makes the model class-conditional; the class names of a ``ClassLabel`` column become
the transformer config's ``id2label`` (the pipeline resolves names with them). ``--class_dropout_prob``
(default 0.1 for class-conditional models) trains the null class used by classifier-free guidance.

``--caption_column`` (e.g. ``text``: an image folder with a ``metadata.jsonl``, a Hub dataset, or a codes
dataset from ``extract_codes.py``, which carries the captions) makes the model text-conditional, as the
official CC-3M models: a prefix of ``--max_text_length`` caption tokens (default 32) and an auxiliary
next-token loss weighted by ``--text_loss_weight`` (config default 0.1; the code loss by the config's
``image_loss_weight``, 0.9). The tokenizer is ``--tokenizer_name_or_path`` (a saved tokenizer, or a pipeline
folder with ``tokenizer/``), or else a ``CharBPETokenizer`` (lowercase, ``[PAD]`` = 0, ``[UNK]`` = 1, as the
official one) trained on the training captions with ``--text_vocab_size`` tokens at most, saved in
``output_dir/tokenizer``. ``--bpe_dropout`` (0.1 in the official training) tokenizes training captions with BPE
dropout. ``--caption_dropout_prob`` (default 0.1) replaces captions by the empty one, which classifier-free
guidance uses as its unconditional branch. Validation grids show one row per ``--validation_prompts`` caption
(default: the first distinct held-out captions).

``--soft_labels`` trains on the official soft targets: per depth ``softmax(-||r - e_k||^2 / T)`` of the
RQ-VAE quantizer on the encoder latents (``--soft_label_temperature`` T, 0.5 in the official configs), the
input codes being sampled from the same distributions. It needs the latents: images encoded on the fly, or a
codes dataset with a ``latents`` column (h, w, vq_embed_dim).

Model: ``--model_config_name_or_path`` is a transformer config JSON / folder (a new model) or a trained
transformer folder / Hub id (fine-tuning); without it a small model is built (hidden 128, 4 spatial + 1
depth layers). The flags ``--hidden_size``, ``--num_spatial_layers``, ``--num_depth_layers``,
``--num_attention_heads``, ``--intermediate_size`` and the dropouts override the config of a new model.
The vocabulary, code shape and code-embedding width come from the RQ-VAE (a config that disagrees is an
error); the code embeddings of a new model start from the RQ-VAE codebook
(``model.init_code_embeddings(vae)``, frozen unless ``--train_code_embeddings``).

Optimisation: AdamW (betas 0.9, 0.95 by default), weight decay on the Linear weights only (not on norms,
biases, embeddings or position embeddings), gradient clipping, cosine schedule with warmup, optional EMA of
the weights (``--use_ema``; saved in the checkpoints; the final model is the EMA model), mixed precision
(the RQ-VAE and its quantizer stay fp32).

LoRA: ``--use_lora --lora_rank R --lora_alpha A [--lora_target_modules ...]`` (peft, ``rq_hf.lora``) adapts the
attention and MLP projections of the trained transformer ``--model_config_name_or_path`` and trains only the
adapters; ``--output_dir`` then gets the adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)
and checkpoints hold the adapter instead of the model. Load it with
``RQTransformerPipeline.from_pretrained(base).load_lora_weights(output_dir)``. ``--gradient_checkpointing``
recomputes each block's activations in the backward (with or without LoRA).

Validation every ``--validation_steps`` (and at the end), on the main process: the NLL of held-out codes in
bits per code (``--validation_split``, or a ``--validation_fraction`` of the training rows) and a PNG grid of
samples through ``RQTransformerPipeline`` in ``output_dir/validation/`` (one row per class for
class-conditional models, ``--guidance_scale``, ``--top_k``, ``--top_p``).

Outputs in ``--output_dir``: the whole pipeline
(``RQTransformerPipeline(vqvae, transformer).save_pretrained``:
``vqvae/``, ``transformer/``, ``model_index.json``, code, model card with the validation bits per code),
``checkpoint-<step>/`` folders, ``validation/`` grids and ``logs/metrics.jsonl``. ``--push_to_hub`` uploads
that folder, model card included (not the checkpoints). Resume, the non-finite-loss guard and undecodable
images behave as in ``train_rqvae.py`` (``rq_hf.training.script_utils``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Callable, NamedTuple

# Only light imports at module level: `--help` must be fast. Heavy libraries are imported in main().
from rq_hf.training.script_utils import (
    add_bookkeeping_args,
    add_data_args,
    add_optimization_args,
    check_common_args,
    run_cli,
)

logger = logging.getLogger("train_rq_transformer")

#: Architecture of a new model when no --model_config_name_or_path is given (about 1M parameters).
SMALL_CONFIG = {
    "hidden_size": 128,
    "num_spatial_layers": 4,
    "num_depth_layers": 1,
    "num_attention_heads": 4,
    "resid_dropout": 0.1,
}
#: Config fields that the command line may override for a new model (None: keep the config's value).
ARCHITECTURE_FLAGS = (
    "hidden_size",
    "num_spatial_layers",
    "num_depth_layers",
    "num_attention_heads",
    "intermediate_size",
)
DROPOUT_FLAGS = ("resid_dropout", "attn_dropout", "embd_dropout")


def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser (shared groups from ``rq_hf.training.script_utils`` + stage-2 flags)."""
    parser = argparse.ArgumentParser(
        description="Train an RQ-Transformer (stage 2) on the codes of a frozen RQ-VAE with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--vqvae_model_name_or_path",
        type=str,
        required=True,
        help="The trained RQVAEModel (folder written by save_pretrained, or Hub id).",
    )
    model.add_argument(
        "--model_config_name_or_path",
        type=str,
        default=None,
        help="A transformer config JSON file or a folder with config.json (new model), or a trained "
        "transformer folder / Hub id (fine-tuning). Default: a small model (hidden 128, 4+1 layers).",
    )
    for name in ARCHITECTURE_FLAGS:
        model.add_argument(f"--{name}", type=int, default=None, help="Override the config of a new model.")
    for name in DROPOUT_FLAGS:
        model.add_argument(f"--{name}", type=float, default=None, help="Override the config's dropout.")
    model.add_argument(
        "--class_dropout_prob",
        type=float,
        default=None,
        help="Probability of replacing a class label by the null class (classifier-free guidance). Default: "
        "0.1 for a new class-conditional model, the config's value otherwise.",
    )
    model.add_argument(
        "--caption_dropout_prob",
        type=float,
        default=None,
        help="Probability of replacing a caption by the empty caption (classifier-free guidance). Default: 0.1 for "
        "a new text-conditional model, the config's value otherwise.",
    )
    model.add_argument(
        "--text_loss_weight",
        type=float,
        default=None,
        help="Weight of the caption-token loss of a text-conditional model (default: the config's, 0.1).",
    )
    model.add_argument(
        "--max_text_length",
        type=int,
        default=None,
        help="Caption tokens of a new text-conditional model (default 32; a trained model keeps its own).",
    )
    model.add_argument(
        "--tokenizer_name_or_path",
        type=str,
        default=None,
        help="Caption tokenizer (a save_pretrained folder, a pipeline folder with tokenizer/, or a Hub id). "
        "Default: train a BPE tokenizer on the training captions.",
    )
    model.add_argument(
        "--text_vocab_size",
        type=int,
        default=16384,
        help="At most this many tokens in a tokenizer trained on the captions.",
    )
    model.add_argument(
        "--bpe_dropout", type=float, default=0.0, help="BPE dropout of the training captions (official: 0.1)."
    )
    model.add_argument(
        "--train_code_embeddings",
        action="store_true",
        help="Train the code embeddings (initialised from the RQ-VAE codebook; frozen by default).",
    )
    model.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; save the EMA model.")
    model.add_argument("--ema_decay", type=float, default=0.999, help="Decay of --use_ema.")
    lora = parser.add_argument_group("LoRA (rq_hf.lora, needs peft: the lora extra)")
    lora.add_argument("--use_lora", action="store_true", help="Train only LoRA adapters of the trained transformer "
                      "--model_config_name_or_path; output_dir gets the adapter folder, not a pipeline.")
    lora.add_argument("--lora_rank", type=int, default=8, help="Rank of the LoRA matrices.")
    lora.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA alpha (updates scaled by alpha / rank).")
    lora.add_argument("--lora_dropout", type=float, default=0.0, help="Dropout on the LoRA branch.")
    lora.add_argument("--lora_target_modules", nargs="+", default=None, help="nn.Linear layers to adapt. "
                      "Default: query key value out_proj fc_in fc_out (attention and MLP of every block).")

    data = add_data_args(parser)
    data.add_argument(
        "--codes_dataset",
        type=str,
        default=None,
        help="A save_to_disk dataset of codes from examples/extract_codes.py (instead of the image flags).",
    )
    data.add_argument("--codes_column", type=str, default="codes", help="Codes column of --codes_dataset.")
    data.add_argument(
        "--label_column",
        "--class_label_column",  # its former name, kept for existing commands
        dest="label_column",
        type=str,
        default=None,
        help="Label column: makes the model class-conditional (class names of a ClassLabel become id2label). "
        "`--class_label_column` is its former name.",
    )
    data.add_argument(
        "--caption_column",
        type=str,
        default=None,
        help="Caption column (e.g. 'text'): makes the model text-conditional.",
    )
    data.add_argument(
        "--validation_split",
        type=str,
        default=None,
        help="Split with the held-out rows for the validation NLL (e.g. 'test'). Default: hold out "
        "--validation_fraction of the training rows.",
    )
    data.add_argument(
        "--validation_fraction",
        type=float,
        default=0.05,
        help="Held-out fraction of the training rows when there is no --validation_split (0: no validation NLL).",
    )
    data.add_argument("--max_validation_samples", type=int, default=1000, help="At most this many held-out rows.")

    add_optimization_args(
        parser,
        learning_rate=3e-4,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_weight_decay=0.01,
        lr_scheduler="cosine",
        lr_warmup_steps=100,
        max_grad_norm=1.0,
        train_batch_size=64,
    )
    loss = parser.add_argument_group("loss")
    loss.add_argument(
        "--soft_labels",
        action="store_true",
        help="Soft targets and stochastic input codes from the RQ-VAE quantizer (official recipe).",
    )
    loss.add_argument("--soft_label_temperature", type=float, default=0.5, help="Temperature of --soft_labels.")

    add_bookkeeping_args(parser, output_dir="rq-transformer-model")
    val = parser.add_argument_group("validation samples")
    val.add_argument(
        "--num_validation_images",
        type=int,
        default=4,
        help="Samples per row of the validation grid (one row per class when class-conditional).",
    )
    val.add_argument(
        "--num_validation_classes", type=int, default=10, help="At most this many rows (classes or prompts)."
    )
    val.add_argument(
        "--validation_prompts",
        type=str,
        nargs="+",
        default=None,
        help="Captions of the validation grid rows of a text-conditional model (default: the first distinct "
        "held-out captions).",
    )
    val.add_argument("--guidance_scale", type=float, default=2.0, help="Classifier-free guidance of the samples.")
    val.add_argument("--top_k", type=int, default=None, help="Top-k sampling of the validation samples.")
    val.add_argument("--top_p", type=float, default=None, help="Top-p sampling of the validation samples.")
    val.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the flags; ``ValueError`` names the bad flag."""
    args = build_parser().parse_args(argv)
    if args.codes_dataset is not None:
        if args.dataset_name is not None or args.train_data_dir is not None:
            raise ValueError(
                f"give either `--codes_dataset` ({args.codes_dataset!r}) or the image flags "
                f"`--dataset_name` / "
                f"`--train_data_dir`, got both (dataset_name={args.dataset_name!r}, "
                f"train_data_dir={args.train_data_dir!r})"
            )
        args.dataset_name = args.codes_dataset  # satisfies check_common_args' "one source" rule
        check_common_args(args)
        args.dataset_name = None
    else:
        if args.dataset_name is None and args.train_data_dir is None:
            raise ValueError("give `--codes_dataset`, `--dataset_name` or `--train_data_dir`, got none")
        check_common_args(args)
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"`--validation_fraction` must be in [0, 1), got {args.validation_fraction}")
    if args.soft_label_temperature <= 0:
        raise ValueError(f"`--soft_label_temperature` must be > 0, got {args.soft_label_temperature}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"`--ema_decay` must be in [0, 1), got {args.ema_decay}")
    if args.class_dropout_prob is not None and not 0.0 <= args.class_dropout_prob < 1.0:
        raise ValueError(f"`--class_dropout_prob` must be in [0, 1), got {args.class_dropout_prob}")
    if args.class_dropout_prob and args.label_column is None:
        raise ValueError(
            f"`--class_dropout_prob` {args.class_dropout_prob} needs a class-conditional model: give "
            "`--label_column`"
        )
    if args.caption_column is not None and args.label_column is not None:
        raise ValueError(
            f"give `--caption_column` ({args.caption_column!r}) or `--label_column` "
            f"({args.label_column!r}), not both: a model is text- or class-conditional"
        )
    text_flags = {
        name: getattr(args, name)
        for name in ("caption_dropout_prob", "text_loss_weight", "max_text_length", "tokenizer_name_or_path",
                     "validation_prompts")
        if getattr(args, name) is not None
    }
    if args.bpe_dropout:
        text_flags["bpe_dropout"] = args.bpe_dropout
    if args.caption_column is None and text_flags:
        name = sorted(text_flags)[0]
        raise ValueError(
            f"`--{name}` {text_flags[name]!r} needs a text-conditional model: give `--caption_column`"
        )
    if args.caption_dropout_prob is not None and not 0.0 <= args.caption_dropout_prob < 1.0:
        raise ValueError(f"`--caption_dropout_prob` must be in [0, 1), got {args.caption_dropout_prob}")
    if not 0.0 <= args.bpe_dropout < 1.0:
        raise ValueError(f"`--bpe_dropout` must be in [0, 1), got {args.bpe_dropout}")
    if args.text_loss_weight is not None and args.text_loss_weight < 0:
        raise ValueError(f"`--text_loss_weight` must be >= 0, got {args.text_loss_weight}")
    if args.max_text_length is not None and args.max_text_length < 1:
        raise ValueError(f"`--max_text_length` must be >= 1, got {args.max_text_length}")
    if args.text_vocab_size < 3:
        raise ValueError(f"`--text_vocab_size` must be >= 3 ([PAD], [UNK] and one token), got {args.text_vocab_size}")
    for name in ("num_validation_images", "num_validation_classes", "max_validation_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}")
    if args.guidance_scale < 1.0:
        raise ValueError(f"`--guidance_scale` must be >= 1, got {args.guidance_scale}")
    if args.use_lora:
        check_lora_flags(args)
    return args


def check_lora_flags(args: argparse.Namespace) -> None:
    """``--use_lora`` adapts a trained transformer and trains nothing else; ``ValueError`` names the bad flag."""
    from rq_hf.lora import check_lora_args

    check_lora_args(args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    if args.model_config_name_or_path is None:
        raise ValueError("`--use_lora` needs a trained transformer: give `--model_config_name_or_path` (a "
                         "transformer folder, e.g. PIPELINE/transformer, or a Hub id), got none")
    for flag in ("train_code_embeddings", "use_ema", "push_to_hub"):
        if getattr(args, flag):
            raise ValueError(f"`--{flag}` is not supported with `--use_lora` (only the adapters train; upload the "
                             "adapter folder with `hf upload`), got both")


# ============================================================================================ model


def load_vqvae(path: str):
    """The frozen RQ-VAE in eval mode and fp32 (weights missing from the folder are an error)."""
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"`--vqvae_model_name_or_path` {path!r} is a folder without config.json")
    vae = RQVAEModel.from_pretrained(path)  # strict: weights that do not match the config raise
    vae.requires_grad_(False).float()
    return vae.eval()


def _is_trained_model(path: str) -> bool:
    return (
        os.path.isdir(path)
        and any(
            name.startswith("model") and name.endswith((".safetensors", ".bin", ".json")) and name != "model_index.json"
            for name in os.listdir(path)
        )
        and any(name.endswith((".safetensors", ".bin")) for name in os.listdir(path))
    )


def build_transformer(
    args: argparse.Namespace, vae, code_shape: list[int], id2label: dict[int, str] | None, tokenizer=None
):
    """A new model from ``SMALL_CONFIG`` / a config file or folder (+ CLI overrides), or a trained model.

    The vocabulary, code shape and code-embedding width must agree with the RQ-VAE and the data; the number
    of classes with ``--label_column``; the text vocabulary and padding id with the caption ``tokenizer``
    (text-conditional models). ``ValueError`` names what disagrees. Returns ``(model, is_new)``.
    """
    import torch

    from rq_hf.models.configuration_rq_transformer import RQTransformerConfig
    from rq_hf.models.modeling_rq_transformer import RQTransformerForCausalImageModeling

    path = args.model_config_name_or_path
    derived = {  # besides the sizes the RQ-VAE decides (`RQTransformerConfig.fill_from_vqvae`)
        "num_classes": None if id2label is None else len(id2label),
        "text_vocab_size": None if tokenizer is None else len(tokenizer),
    }
    if tokenizer is not None:
        derived["text_pad_token_id"] = tokenizer.pad_token_id
        if args.max_text_length is not None:
            derived["max_text_length"] = args.max_text_length
    flags = (
        f"--vqvae_model_name_or_path {args.vqvae_model_name_or_path!r}, --label_column "
        f"{args.label_column!r}, --caption_column {args.caption_column!r}"
    )
    source = f"`--model_config_name_or_path` {path!r}"
    if path is not None and (_is_trained_model(path) or not (os.path.isfile(path) or os.path.isdir(path))):
        # A trained transformer (local folder with weights, or a Hub id): fine-tune it.
        model = RQTransformerForCausalImageModeling.from_pretrained(path, dtype=torch.float32)
        config = model.config
        try:
            config.fill_from_vqvae(vae, code_shape)  # all set in a trained model: checks only
        except ValueError as err:
            raise ValueError(f"{source} (a trained transformer): {err} ({flags})") from None
        for key, value in derived.items():
            current = getattr(config, key)
            if current != value:
                raise ValueError(
                    f"{source} (a trained transformer) has {key}={current}, but the RQ-VAE / data / tokenizer "
                    f"need {key}={value} ({flags})"
                )
        overridden = [name for name in ARCHITECTURE_FLAGS if getattr(args, name) is not None]
        if overridden:
            raise ValueError(
                f"{source} is a trained model: its architecture cannot change, got --{overridden[0]} "
                f"{getattr(args, overridden[0])}"
            )
        for name in DROPOUT_FLAGS:
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        for name in ("class_dropout_prob", "caption_dropout_prob", "text_loss_weight"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        if id2label is not None:
            config.id2label = dict(id2label)
            config.label2id = {name: i for i, name in id2label.items()}
        model.code_embeddings.weight.requires_grad_(args.train_code_embeddings)  # as for a new model
        model.train()
        return model, False

    if path is None:
        base = dict(SMALL_CONFIG)
    else:
        config_file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(config_file):
            raise ValueError(f"{source} is a folder without config.json or model weights")
        with open(config_file, encoding="utf-8") as f:
            base = json.load(f)
        if not isinstance(base, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(base).__name__}")
    for key, value in derived.items():
        if key in base and base[key] is not None and base[key] != value:
            raise ValueError(
                f"{source}: {key}={base[key]} does not match the RQ-VAE / data / tokenizer, which need "
                f"{key}={value} ({flags})"
            )
        base[key] = value
    for name in ARCHITECTURE_FLAGS + DROPOUT_FLAGS:
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if id2label is not None:
        base["id2label"] = {int(i): str(name) for i, name in id2label.items()}
        base.pop("label2id", None)
        base["class_dropout_prob"] = (
            args.class_dropout_prob if args.class_dropout_prob is not None else base.get("class_dropout_prob", 0.1)
        )
    else:
        base.pop("id2label", None)
        base.pop("label2id", None)
        base["class_dropout_prob"] = 0.0
    if tokenizer is not None:
        dropout = args.caption_dropout_prob
        base["caption_dropout_prob"] = dropout if dropout is not None else base.get("caption_dropout_prob", 0.1)
        if args.text_loss_weight is not None:
            base["text_loss_weight"] = args.text_loss_weight
    else:
        base["caption_dropout_prob"] = 0.0
    config = RQTransformerConfig.from_dict(base)
    try:
        config.fill_from_vqvae(vae, code_shape)
    except ValueError as err:
        raise ValueError(f"{source}: {err} ({flags})") from None
    model = RQTransformerForCausalImageModeling(config)
    model.init_code_embeddings(vae, freeze=not args.train_code_embeddings)
    model.train()
    return model, True


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the weights of Linear layers only (not on norms, biases, embeddings and
    position embeddings, as in nanoGPT / minGPT); frozen parameters are left out."""
    import torch

    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if id(parameter) in decay_ids else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ============================================================================================ data


def class_names_of(dataset, column: str | None, flag_source: str) -> dict[int, str] | None:
    """``id2label`` of the label ``column``: ``ClassLabel`` names or the ids as strings; None if no column."""
    import datasets

    if column is None:
        return None
    if column not in dataset.column_names:
        raise ValueError(
            f"`--label_column` {column!r} is not a column of {flag_source}; available columns: "
            f"{dataset.column_names}"
        )
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    values = list(dataset.with_format(None)[column])
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(
            f"`--label_column` {column!r} must hold class ids (a ClassLabel or integers >= 0), got {feature}"
        )
    return {i: str(i) for i in range(max(values) + 1)}


def load_codes_dataset(args: argparse.Namespace, split: str):
    """One split of ``--codes_dataset`` (``DatasetDict`` or ``Dataset``), checked; ``--max_train_samples``
    applies to the training split."""
    import datasets

    path = args.codes_dataset
    if not os.path.isdir(path):
        raise ValueError(f"`--codes_dataset` must be a folder written by save_to_disk, got {path!r}")
    try:
        dataset = datasets.load_from_disk(path)
    except (FileNotFoundError, IndexError) as err:
        raise ValueError(f"`--codes_dataset` {path!r} is not a readable save_to_disk dataset ({err})") from err
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} is not in `--codes_dataset` {path!r}; available: {list(dataset)}")
        dataset = dataset[split]
    elif split != "train":
        raise ValueError(
            f"`--validation_split` {split!r} needs a DatasetDict in `--codes_dataset` {path!r}, got one Dataset"
        )
    if len(dataset) == 0:
        raise ValueError(f"`--codes_dataset` {path!r} (split {split!r}) is empty (0 rows)")
    if args.codes_column not in dataset.column_names:
        raise ValueError(
            f"`--codes_column` {args.codes_column!r} is not a column of `--codes_dataset` {path!r}; "
            "available "
            f"columns: {dataset.column_names}"
        )
    if split == "train" and args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset


def codes_collate(codes_column: str, label_column: str | None, with_latents: bool, caption_column: str | None = None):
    """Collate rows of a codes dataset (torch format) into ``codes`` / ``class_labels`` / ``latents`` /
    ``captions``."""
    import torch

    def collate(rows):
        batch = {
            "codes": torch.stack([torch.as_tensor(r[codes_column]) for r in rows]).long(),
            "num_skipped": 0,
        }
        if label_column is not None:
            batch["class_labels"] = torch.tensor([int(r[label_column]) for r in rows], dtype=torch.long)
        if with_latents:
            batch["latents"] = torch.stack([torch.as_tensor(r["latents"]) for r in rows]).float()
        if caption_column is not None:
            batch["captions"] = [str(r[caption_column]) for r in rows]
        return batch

    return collate


def caption_tokenizer(args: argparse.Namespace, dataset, accelerator):
    """The caption tokenizer: ``--tokenizer_name_or_path``, or a BPE tokenizer trained on the ``dataset``'s
    captions by the main process and saved in ``output_dir/tokenizer`` (reused when resuming)."""
    from transformers import AutoTokenizer

    from rq_hf.models.tokenization_rq_transformer import train_caption_tokenizer

    path = args.tokenizer_name_or_path
    if path is not None:
        subfolder = os.path.join(path, "tokenizer")
        if os.path.isdir(subfolder) and not os.path.isfile(os.path.join(path, "tokenizer.json")):
            path = subfolder  # a pipeline folder
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"`--tokenizer_name_or_path` {args.tokenizer_name_or_path!r} must have a padding token")
        return tokenizer
    folder = os.path.join(args.output_dir, "tokenizer")
    reuse = args.resume_from_checkpoint is not None and os.path.isfile(os.path.join(folder, "tokenizer.json"))
    with accelerator.main_process_first():
        if accelerator.is_main_process and not reuse:
            captions = (row for batch in dataset.iter(batch_size=1000) for row in batch[args.caption_column])
            tokenizer = train_caption_tokenizer(captions, args.text_vocab_size, args.max_text_length or 32)
            tokenizer.save_pretrained(folder)
            logger.info("Trained a BPE caption tokenizer of %d tokens on the training captions", len(tokenizer))
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer


def held_out_split(dataset, args: argparse.Namespace):
    """``(train, held_out)`` with ``--validation_fraction`` of the rows held out (None: 0 or too small)."""
    if args.validation_fraction == 0 or len(dataset) < 2:
        return dataset, None
    count = min(args.max_validation_samples, max(1, round(len(dataset) * args.validation_fraction)))
    count = min(count, len(dataset) - 1)
    split = dataset.train_test_split(test_size=count, shuffle=True, seed=args.seed)
    return split["train"], split["test"]


class TrainingData(NamedTuple):
    """What :func:`load_training_data` returns."""

    rows: Any  # the training rows as loaded (the caption tokenizer and the validation prompts read them)
    train_dataset: Any  # the rows the training loader reads (transformed images, or torch-formatted codes)
    collate: Callable
    held_out_rows: Any  # the held-out rows, or None
    held_out: dict | None  # held-out codes (and labels / captions), batched for `evaluate_nll`
    id2label: dict[int, str] | None
    code_shape: list[int]
    source: str  # the flag that named the data, for messages and the model card
    from_codes: bool


def load_training_data(args: argparse.Namespace, vae, device) -> TrainingData:
    """The training rows from one of the two sources, a codes dataset (``--codes_dataset``) or images encoded
    on the fly (``--dataset_name`` / ``--train_data_dir``), checked against the RQ-VAE, and the held-out codes
    (``--validation_split``, or a ``--validation_fraction`` of the training rows)."""
    import torch

    from rq_hf.data import ImageTransform, check_caption_column, collate_images, with_image_transform
    from rq_hf.training.script_utils import load_train_dataset

    label_column, caption_column = args.label_column, args.caption_column
    from_codes = args.codes_dataset is not None
    if from_codes:
        dataset = load_codes_dataset(args, "train")
        source = f"--codes_dataset {args.codes_dataset!r}"
        id2label = class_names_of(dataset, label_column, source)
        check_caption_column(dataset, caption_column, source)
        with_latents = args.soft_labels
        if args.soft_labels and "latents" not in dataset.column_names:
            raise ValueError(
                f"`--soft_labels` needs the RQ-VAE encoder latents, but `--codes_dataset` "
                f"{args.codes_dataset!r} "
                f"has no 'latents' column (columns: {dataset.column_names}); train from the images instead "
                "(--dataset_name / --train_data_dir: encoded on the fly) or drop --soft_labels"
            )
        code_shape = list(torch.as_tensor(dataset.with_format("torch")[0][args.codes_column]).shape)
        size = vae.config.sample_size
        expected = list(vae.code_shape_for(*(size if isinstance(size, (list, tuple)) else (size, size))))
        if len(code_shape) != 3 or code_shape[2] != vae.config.code_depth:
            raise ValueError(
                f"`--codes_dataset` codes must have shape (h, w, D={vae.config.code_depth}) to fit the "
                "RQ-VAE, "
                f"got {tuple(code_shape)}"
            )
        if code_shape != expected:
            raise ValueError(
                f"`--codes_dataset` codes of shape {tuple(code_shape)} do not fit the RQ-VAE's pipeline "
                "shape "
                f"{tuple(expected)} (sample_size {vae.config.sample_size})"
            )
        if args.validation_split is not None:
            held_out_rows = load_codes_dataset(args, args.validation_split)
        else:
            dataset, held_out_rows = held_out_split(dataset, args)
        columns = [args.codes_column] + ([label_column] if label_column else []) + (["latents"] if with_latents else [])
        dataset = dataset.with_format("torch", columns=columns + ([caption_column] if caption_column else []))
        collate = codes_collate(args.codes_column, label_column, with_latents, caption_column)
        train_dataset = dataset
    else:
        dataset = load_train_dataset(args)
        source = (
            f"--dataset_name {args.dataset_name!r}"
            if args.dataset_name
            else f"--train_data_dir {args.train_data_dir!r}"
        )
        id2label = class_names_of(dataset, label_column, source)
        check_caption_column(dataset, caption_column, source)
        if args.resolution % vae.downsample_factor:
            raise ValueError(
                f"`--resolution` must be a multiple of the RQ-VAE's down-sampling factor "
                f"{vae.downsample_factor}, "
                f"got {args.resolution}"
            )
        code_shape = list(vae.code_shape_for(args.resolution, args.resolution))
        if args.validation_split is not None:
            val_args = argparse.Namespace(**{**vars(args), "max_train_samples": None})
            held_out_rows = load_train_dataset(val_args, split=args.validation_split)
        else:
            dataset, held_out_rows = held_out_split(dataset, args)
        channels = vae.config.in_channels
        transform = ImageTransform(
            args.resolution,
            center_crop=args.center_crop,
            random_flip=args.random_flip,
            num_channels=channels,
            pad_to_resolution=args.pad_to_resolution,
        )
        train_dataset = with_image_transform(
            dataset,
            transform,
            args.image_column,
            label_column=label_column,
            on_decode_error=args.on_decode_error,
            seed=args.seed,
            caption_column=caption_column,
        )
        collate = collate_images

    # held-out codes (deterministic nearest codes for image data), batched for evaluate_nll
    held_out = None
    if held_out_rows is not None:
        held_out_rows = held_out_rows.select(range(min(args.max_validation_samples, len(held_out_rows))))
        if from_codes:
            cols = [args.codes_column] + [c for c in (label_column, caption_column) if c]
            loader = torch.utils.data.DataLoader(
                held_out_rows.with_format("torch", columns=cols),
                batch_size=args.train_batch_size,
                collate_fn=codes_collate(args.codes_column, label_column, False, caption_column),
            )
            batches = list(loader)
        else:
            val_transform = ImageTransform(
                args.resolution,
                center_crop=True,
                num_channels=vae.config.in_channels,
                pad_to_resolution=args.pad_to_resolution,
            )
            rows = with_image_transform(
                held_out_rows, val_transform, args.image_column, label_column=label_column,
                caption_column=caption_column,
            )
            loader = torch.utils.data.DataLoader(rows, batch_size=args.train_batch_size, collate_fn=collate_images)
            batches = []
            with torch.no_grad():
                for batch in loader:
                    if batch["pixel_values"] is None:
                        continue
                    batch["codes"] = vae.encode(batch["pixel_values"].to(device)).codes.cpu()
                    batches.append(batch)
        if batches:
            held_out = {
                "codes": [b["codes"] for b in batches],
                "class_labels": [b["class_labels"] for b in batches] if label_column else None,
                "captions": [b["captions"] for b in batches] if caption_column else None,
            }
    return TrainingData(dataset, train_dataset, collate, held_out_rows, held_out, id2label, code_shape, source,
                        from_codes)


# ============================================================================================ validation


def sample_grid(vae, transformer, args: argparse.Namespace, device, tokenizer=None):
    """Samples through ``RQTransformerPipeline``, as a PIL grid: one row per class (at most
    ``--num_validation_classes``) for a class-conditional model, one row per ``--validation_prompts`` caption
    for a text-conditional one, one row otherwise."""
    import torch
    from diffusers.utils import make_image_grid

    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    pipe = RQTransformerPipeline(vqvae=vae, transformer=transformer, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=device).manual_seed(args.seed or 0)
    kind = transformer.config.condition_type
    cols = args.num_validation_images
    sampling = dict(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, generator=generator)
    if kind == "none":
        rows = 1
        images = pipe(num_images=cols, **sampling).images
    elif kind == "text":
        rows = len(args.validation_prompts)
        images = pipe(
            prompt=args.validation_prompts, num_images_per_prompt=cols, guidance_scale=args.guidance_scale, **sampling
        ).images
    else:
        rows = min(transformer.config.num_classes, args.num_validation_classes)
        labels = [c for c in range(rows) for _ in range(cols)]
        images = pipe(class_labels=labels, guidance_scale=args.guidance_scale, **sampling).images
    return make_image_grid(images, rows=rows, cols=cols)


def validate(
    vae, transformer, held_out, args: argparse.Namespace, step: int, device, tokenizer=None
) -> dict[str, float]:
    """Bits per code on the held-out codes and ``validation/step_<step>.png``; restores the training mode."""
    import torch

    from rq_hf.evaluation import evaluate_nll
    from rq_hf.models.tokenization_rq_transformer import tokenize_captions

    values = {}
    was_training = transformer.training
    transformer.eval()
    try:
        with torch.no_grad():
            if held_out is not None:
                text_ids = None
                if held_out["captions"] is not None:
                    length = transformer.config.max_text_length
                    text_ids = [
                        tokenize_captions(tokenizer, c, length, warn_truncated=False) for c in held_out["captions"]
                    ]
                values["val/bits_per_code"] = evaluate_nll(
                    transformer, held_out["codes"], held_out["class_labels"], device=device, text_ids_batches=text_ids
                )
            grid = sample_grid(vae, transformer, args, device, tokenizer)
    finally:
        transformer.train(was_training)
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    grid.save(os.path.join(folder, f"step_{step:06d}.png"))
    return values


# ============================================================================================ main


def main(argv: list[str] | None = None) -> str:
    """Train; see the module docstring. Returns the output folder (the saved pipeline)."""
    args = parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from rq_hf.models.tokenization_rq_transformer import tokenize_captions, with_bpe_dropout
    from rq_hf.training.ema import make_ema_model
    from rq_hf.training.script_utils import (
        MetricsLog,
        compute_schedule,
        count_skipped_images,
        guard_finite,
        init_trackers,
        iterate_epochs,
        make_accelerator,
        make_lr_scheduler,
        make_train_dataloader,
        maybe_save_checkpoint,
        reduce_step_values,
        resume_training,
        save_and_push,
        training_card_section,
    )
    from rq_hf.training.sharding import configure_sharding, full_model_on_main, scalar

    accelerator = make_accelerator(args)
    device = accelerator.device
    logger.info("%s", accelerator.state)
    vae = load_vqvae(args.vqvae_model_name_or_path).to(device)
    label_column = args.label_column
    caption_column = args.caption_column

    # ------------------------------------------------------------------ data
    data = load_training_data(args, vae, device)
    dataset, train_dataset, collate, held_out_rows, held_out = (
        data.rows, data.train_dataset, data.collate, data.held_out_rows, data.held_out
    )
    id2label, code_shape, source, from_codes = data.id2label, data.code_shape, data.source, data.from_codes

    tokenizer = train_tokenizer = None
    if caption_column is not None:
        tokenizer = caption_tokenizer(args, dataset, accelerator)
        train_tokenizer = with_bpe_dropout(tokenizer, args.bpe_dropout) if args.bpe_dropout else tokenizer
        if args.validation_prompts is None:
            rows = held_out_rows if held_out_rows is not None else dataset
            distinct = dict.fromkeys(rows.select(range(min(len(rows), 1000)))[caption_column])
            args.validation_prompts = list(distinct)[: args.num_validation_classes]

    train_dataloader = accelerator.prepare(make_train_dataloader(train_dataset, args, collate))
    schedule = compute_schedule(len(train_dataloader), args)

    # ------------------------------------------------------------------ model, optimisation
    model, is_new = build_transformer(args, vae, code_shape, id2label, tokenizer)
    from rq_hf.pipelines.pipeline_rq_transformer import RQTransformerPipeline

    # fail now, not after training, if they do not fit
    RQTransformerPipeline(vqvae=vae, transformer=model, tokenizer=tokenizer)
    if tokenizer is not None:
        tokenizer.model_max_length = model.config.max_text_length
    if args.use_lora:
        from rq_hf.lora import add_lora_adapter

        if is_new:
            raise ValueError(f"`--use_lora` needs a trained transformer, but `--model_config_name_or_path` "
                             f"{args.model_config_name_or_path!r} is a config (a new model)")
        model = add_lora_adapter(model, args.lora_rank, args.lora_alpha, args.lora_target_modules, args.lora_dropout)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant: works with frozen inputs (LoRA) too
    if args.scale_lr:
        args.learning_rate *= args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        param_groups(model, args.adam_weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    lr_scheduler = make_lr_scheduler(optimizer, args, schedule, accelerator.num_processes)
    configure_sharding(accelerator, model, args)  # FSDP/DeepSpeed: blocks as units, frozen parts whole
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    if args.use_lora:
        from rq_hf.lora import register_adapter_checkpointing

        register_adapter_checkpointing(accelerator, unwrapped)  # checkpoints hold the adapter, not the model
    ema = None
    if args.use_ema:
        ema = make_ema_model(unwrapped, decay=args.ema_decay).to(device)

    # step 0, or where --resume_from_checkpoint left off; the EMA model is saved and restored with the state
    progress = resume_training(accelerator, args, *([ema] if ema is not None else []))

    init_trackers(accelerator, args, "train_rq_transformer")
    metrics = MetricsLog(accelerator, args.output_dir, args.logging_dir)
    num_params = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    logger.info(
        "***** Training: %d rows (%s), codes %s, %s, %d processes x batch %d x accumulation %d, %d steps "
        "(%d epochs), %.2fM trainable parameters, %s *****",
        len(train_dataset),
        source,
        tuple(code_shape),
        (
            f"{len(id2label)} classes"
            if id2label
            else f"captions ({len(tokenizer)} tokens)" if tokenizer else "unconditional"
        ),
        accelerator.num_processes,
        args.train_batch_size,
        args.gradient_accumulation_steps,
        schedule.max_train_steps,
        schedule.num_train_epochs,
        num_params / 1e6,
        "new model" if is_new else "fine-tuning",
    )
    progress_bar = tqdm(
        total=schedule.max_train_steps,
        initial=progress.global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]

    def eval_model():  # the transformer itself (with its LoRA layers under --use_lora)
        return ema.module if ema is not None else unwrapped.get_base_model() if args.use_lora else unwrapped

    # ------------------------------------------------------------------ loop
    if progress.global_step < schedule.max_train_steps:
        for _, batch in iterate_epochs(train_dataloader, progress, schedule):
            if not from_codes and count_skipped_images(accelerator, batch, progress):
                continue
            class_labels = batch.get("class_labels") if label_column else None
            condition = {}
            if caption_column is not None:
                condition["text_ids"] = tokenize_captions(
                    train_tokenizer, batch["captions"], unwrapped.config.max_text_length, warn_truncated=False
                ).to(device)
            with torch.no_grad():  # the frozen RQ-VAE: codes (and soft targets) of this batch
                if from_codes:
                    codes = batch["codes"]
                    latents = batch.get("latents")
                else:  # in fp32, outside autocast: the codes of extract_codes.py, validation and the pipeline
                    encoded = vae.encode(batch["pixel_values"].float())
                    codes, latents = encoded.codes, encoded.latents.permute(0, 2, 3, 1)
                targets = codes
                if args.soft_labels:
                    soft = vae.quantizer.soft_codes(latents.float(), args.soft_label_temperature, stochastic=True)
                    codes, targets = soft.codes, soft.probs
            step = progress.global_step + 1
            with accelerator.accumulate(model):
                # The WRAPPED model (DDP needs it); a tuple, as accelerate's output conversion prefers.
                values = {}
                if caption_column is None:
                    loss = model(codes=codes, class_labels=class_labels, labels=targets, return_dict=False)[0]
                else:
                    output = model(codes=codes, labels=targets, **condition)
                    loss = output.loss
                    values = {"image_loss": output.image_loss.detach(), "text_loss": output.text_loss.detach()}
                reduced = reduce_step_values(accelerator, {"loss": loss.detach(), **values})
                guard_finite(reduced, step, args.output_dir)  # before any update: nothing bad gets saved
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(trainable, max_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update_parameters(unwrapped)
            progress.global_step += 1
            progress_bar.update(1)
            reduced.pop("nonfinite")
            reduced["lr"] = lr_scheduler.get_last_lr()[0]
            reduced["grad_norm"] = scalar(grad_norm)
            reduced["num_skipped_images"] = progress.num_skipped_images
            progress_bar.set_postfix(loss=f"{reduced['loss']:.4f}", lr=f"{reduced['lr']:.2e}")
            last_step = progress.global_step >= schedule.max_train_steps  # validated after the loop
            if progress.global_step % args.validation_steps == 0 and not last_step:
                whole = full_model_on_main(accelerator, model, eval_model())  # sharded: gathered (all ranks)
                if accelerator.is_main_process:
                    reduced.update(validate(vae, whole, held_out, args, progress.global_step, device, tokenizer))
                    if "val/bits_per_code" in reduced:
                        logger.info(
                            "step %d: validation %.4f bits/code", progress.global_step, reduced["val/bits_per_code"]
                        )
            metrics.log(reduced, step=progress.global_step)
            maybe_save_checkpoint(accelerator, args, progress.global_step)
            if progress.global_step >= schedule.max_train_steps:
                break
    progress_bar.close()

    # ------------------------------------------------------------------ final pipeline
    accelerator.wait_for_everyone()
    final_model = full_model_on_main(accelerator, model, eval_model())  # sharded: gathered, on the main process
    if accelerator.is_main_process:
        final = validate(vae, final_model, held_out, args, progress.global_step, device, tokenizer)
        metrics.log(final, step=progress.global_step)
        card_metrics = {"training steps": progress.global_step}
        if "val/bits_per_code" in final:
            card_metrics["validation NLL (bits per code)"] = round(final["val/bits_per_code"], 4)
            logger.info("Final validation NLL: %.4f bits per code", final["val/bits_per_code"])
        if args.use_ema:
            card_metrics["weights"] = f"EMA (decay {args.ema_decay})"
        description = (
            f"Trained with rq-hf's `examples/train_rq_transformer.py` for {progress.global_step} steps "
            f"on {source} ({'codes' if from_codes else 'images encoded on the fly'}, "
            f"codes {tuple(code_shape)}"
            f"{', soft labels' if args.soft_labels else ''}), with the frozen RQ-VAE "
            f"`{args.vqvae_model_name_or_path}`."
            + (f" LoRA adapter (rank {args.lora_rank}, alpha {args.lora_alpha}) of "
               f"`{args.model_config_name_or_path}`." if args.use_lora else "")
        )
        if args.use_lora:  # the adapter folder (peft); pipe.load_lora_weights(output_dir) puts it on the base
            from rq_hf.lora import save_lora_adapter
            from rq_hf.models.hub_utils import build_model_card

            adapter = {"base_model": args.model_config_name_or_path, "rank": args.lora_rank,
                       "alpha": args.lora_alpha, "target_modules": args.lora_target_modules}
            card = build_model_card("lora", adapter, metrics=card_metrics, library_name="peft",
                                    sections={"Training": training_card_section(description, args)})
            save_lora_adapter(unwrapped, args.output_dir, model_card=card)
            repo_id = None  # --push_to_hub is refused with --use_lora
        else:
            pipe = RQTransformerPipeline(vqvae=vae, transformer=final_model, tokenizer=tokenizer)
            repo_id = save_and_push(pipe, args, metrics=card_metrics, description=description)
        logger.info("Saved the %s to %s", "adapter" if args.use_lora else "pipeline", args.output_dir)
        if repo_id is not None:
            logger.info("Pushed %s to the Hub: %s", args.output_dir, repo_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    run_cli(main, build_parser)  # bad flags or inputs: a usage line and the message, no traceback
