"""Machinery shared by ``examples/train_rqvae.py`` and ``examples/train_rq_transformer.py``.

Everything here imports torch / accelerate / datasets / diffusers lazily (inside the functions), so a
script can build its parser and answer ``--help`` in a fraction of a second.

The flag names follow diffusers' ``examples/vqgan/train_vqgan.py``. A stage-2 script uses it like this::

    parser = argparse.ArgumentParser(description=...)
    add_data_args(parser)                   # --dataset_name, --train_data_dir, --image_column, ...
    add_optimization_args(parser, learning_rate=3e-4, adam_beta2=0.95, lr_scheduler="cosine")
    add_bookkeeping_args(parser, output_dir="rq-transformer")
    ...script-specific flags...
    args = parser.parse_args(argv)
    check_common_args(args)

    accelerator = make_accelerator(args)           # seeds too; seedable, epoch-dependent shuffling
    loader = accelerator.prepare(make_train_dataloader(dataset, args, collate_fn))
    schedule = compute_schedule(len(loader), args)  # after prepare: the loader is sharded
    lr_scheduler = make_lr_scheduler(optimizer, args, schedule, accelerator.num_processes)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    progress = resume_training(accelerator, args)  # a new TrainingProgress, or the checkpoint's
    init_trackers(accelerator, args, "rq-transformer")
    for epoch, batch in iterate_epochs(loader, progress, schedule):   # resumes mid-epoch exactly
        ...
        values = reduce_step_values(accelerator, {"loss": loss.detach()})   # one all-reduce
        guard_finite(values, progress.global_step + 1, args.output_dir)     # before backward/step
        ...
        if accelerator.sync_gradients:
            progress.global_step += 1
            maybe_save_checkpoint(accelerator, args, progress.global_step)
            if progress.global_step >= schedule.max_train_steps: break
    save_and_push(model_to_save, args, metrics=..., description=...)   # save_pretrained + card + push

Checkpoints are folders ``output_dir/checkpoint-<step>`` written by ``accelerator.save_state`` on every
process into a hidden staging folder that the main process moves into place when all processes are done
(``rq_hf.models.atomic_save``), so a folder named ``checkpoint-<step>`` is always complete (a run killed
mid-save leaves only the staging folder, which the next save removes). ``--checkpoints_total_limit`` removes
the oldest ones only after the new one is complete; ``--resume_from_checkpoint latest`` skips incomplete
folders, naming them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CHECKPOINT_MANIFEST",
    "FASHION_MNIST_NAME",
    "KNOWN_TRACKERS",
    "MetricsLog",
    "NonFiniteLossError",
    "Schedule",
    "TrainingProgress",
    "add_bookkeeping_args",
    "add_data_args",
    "add_optimization_args",
    "check_common_args",
    "checkpoint_problem",
    "compute_schedule",
    "count_skipped_images",
    "get_last_checkpoint",
    "guard_finite",
    "hub_repo_id",
    "init_trackers",
    "iterate_epochs",
    "load_train_dataset",
    "make_accelerator",
    "make_lr_scheduler",
    "make_train_dataloader",
    "maybe_save_checkpoint",
    "reduce_step_values",
    "resolve_report_to",
    "resolve_resume_checkpoint",
    "resume_training",
    "run_cli",
    "run_script",
    "save_and_push",
    "save_checkpoint",
    "training_card_section",
]

logger = logging.getLogger(__name__)

#: ``--dataset_name`` value that loads Fashion-MNIST with :func:`rq_hf.data.load_fashion_mnist`
#: (the Debian ``dataset-fashion-mnist`` files, offline; the Hub dataset elsewhere).
FASHION_MNIST_NAME = "fashion_mnist"
#: Trackers ``--report_to`` accepts, with the module that must be importable.
KNOWN_TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
CHECKPOINT_PREFIX = "checkpoint-"
#: File of a checkpoint folder listing its files and their sizes (see :func:`checkpoint_problem`).
CHECKPOINT_MANIFEST = "rq_hf_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_LEGACY_STAGING_RE = re.compile(r"^checkpoint-(\d+)\.tmp$")


# ============================================================================================ arguments


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the image-dataset flags (diffusers names) to ``parser`` and return their group.

    ``--dataset_name`` (Hub id, local ``save_to_disk`` folder, or ``fashion_mnist``),
    ``--dataset_config_name``,
    ``--train_data_dir`` (imagefolder), ``--cache_dir``, ``--image_column``, ``--resolution``,
    ``--center_crop``, ``--random_flip``, ``--pad_to_resolution``, ``--max_train_samples``,
    ``--on_decode_error``, ``--dataloader_num_workers``.
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name", type=str, default=None,
        help="A Hub dataset id, a local folder written by `save_to_disk`, or the special value "
        f"'{FASHION_MNIST_NAME}' (read offline from /usr/share/datasets/fashion-mnist, the Debian package "
        "dataset-fashion-mnist; the Hub dataset otherwise).",
    )
    group.add_argument("--dataset_config_name", type=str, default=None, help="Config of a Hub dataset.")
    group.add_argument(
        "--train_data_dir", type=str, default=None,
        help="A folder of images read with the `imagefolder` builder (instead of --dataset_name).",
    )
    group.add_argument("--cache_dir", type=str, default=None, help="`datasets` cache folder.")
    group.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    group.add_argument("--resolution", type=int, default=32, help="Images are resolution x resolution.")
    group.add_argument("--center_crop", action="store_true", help="Center crop (default: random crop).")
    group.add_argument("--random_flip", action="store_true", help="Random horizontal flips.")
    group.add_argument(
        "--pad_to_resolution", action="store_true",
        help="Pad (instead of upscaling) images smaller than --resolution; on by default for fashion_mnist "
        "(28x28 -> 32x32 with a black border).",
    )
    group.add_argument(
        "--max_train_samples", type=int, default=None,
        help="Keep only the first N training rows (debugging, tiny runs).",
    )
    group.add_argument(
        "--on_decode_error", choices=("skip", "raise"), default="skip",
        help="An undecodable image is counted and skipped with a warning ('skip') or stops the run with "
        "the file named ('raise').",
    )
    group.add_argument(
        "--dataloader_num_workers", type=int, default=0,
        help="DataLoader worker processes (not persistent). Augmentations are seeded per (seed, epoch, row), "
        "so data order and augmentations repeat exactly on resume with any number of workers.",
    )
    return group


def add_optimization_args(
    parser: argparse.ArgumentParser,
    *,
    learning_rate: float = 1e-4,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_weight_decay: float = 0.0,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
    max_grad_norm: float | None = 1.0,
    train_batch_size: int = 16,
) -> argparse._ArgumentGroup:
    """Add the optimisation flags (diffusers names) to ``parser``; keyword arguments set the defaults.

    ``--train_batch_size`` (per process), ``--num_train_epochs``, ``--max_train_steps`` (overrides the
    epochs), ``--gradient_accumulation_steps``, ``--gradient_checkpointing``, ``--learning_rate``,
    ``--scale_lr``, ``--lr_scheduler``, ``--lr_warmup_steps``, ``--adam_beta1/2``, ``--adam_weight_decay``,
    ``--adam_epsilon``, ``--max_grad_norm`` (0 or negative: no clipping), ``--seed``, ``--mixed_precision``.
    """
    group = parser.add_argument_group("optimisation")
    group.add_argument("--train_batch_size", type=int, default=train_batch_size, help="Batch per process.")
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument(
        "--max_train_steps", type=int, default=None,
        help="Total optimisation steps; overrides --num_train_epochs when given.",
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument(
        "--scale_lr", action="store_true",
        help="Multiply the learning rate by processes x batch size x accumulation steps.",
    )
    group.add_argument(
        "--lr_scheduler", type=str, default=lr_scheduler,
        help='diffusers scheduler: "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", '
        '"constant_with_warmup".',
    )
    group.add_argument("--lr_warmup_steps", type=int, default=lr_warmup_steps)
    group.add_argument("--adam_beta1", type=float, default=adam_beta1)
    group.add_argument("--adam_beta2", type=float, default=adam_beta2)
    group.add_argument("--adam_weight_decay", type=float, default=adam_weight_decay)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument(
        "--max_grad_norm", type=float, default=max_grad_norm,
        help="Gradient clipping norm (<= 0: no clipping).",
    )
    group.add_argument(
        "--seed", type=int, default=0,
        help="Seed of the data order and augmentations; process i seeds its other random numbers (dropout, "
        "class dropout, stochastic codes) with seed + i.",
    )
    group.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
        help="Autocast precision; defaults to the accelerate config. The quantizer always stays in fp32.",
    )
    return group


def add_bookkeeping_args(parser: argparse.ArgumentParser, *, output_dir: str) -> argparse._ArgumentGroup:
    """Add output, checkpoint, logging and Hub flags (diffusers names) to ``parser``.

    ``--output_dir``, ``--logging_dir``, ``--checkpointing_steps``, ``--checkpoints_total_limit``,
    ``--resume_from_checkpoint <path|latest>``, ``--validation_steps``, ``--report_to``,
    ``--tracker_project_name``, ``--push_to_hub``, ``--hub_model_id``, ``--hub_token``, ``--hub_private``.
    """
    group = parser.add_argument_group("bookkeeping")
    group.add_argument("--output_dir", type=str, default=output_dir, help="Model, checkpoints and logs.")
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder inside --output_dir.")
    group.add_argument(
        "--checkpointing_steps", type=int, default=500,
        help="Save the full training state (accelerator.save_state) every N steps into "
        "output_dir/checkpoint-<step>.",
    )
    group.add_argument(
        "--checkpoints_total_limit", type=int, default=None,
        help="Keep at most this many checkpoints (the oldest are removed).",
    )
    group.add_argument(
        "--resume_from_checkpoint", type=str, default=None,
        help='A checkpoint folder, or "latest" for the newest checkpoint in --output_dir (a fresh run when '
        "there is none). Continues at the same step, optimizer, scheduler, RNG and data position.",
    )
    group.add_argument("--validation_steps", type=int, default=500, help="Validate every N steps.")
    group.add_argument(
        "--report_to", type=str, default="tensorboard",
        help='Comma-separated trackers among "tensorboard", "wandb", "trackio", or "all" / "none". A '
        "tracker that is not installed is reported and skipped; metrics always go to "
        "output_dir/logs/metrics.jsonl.",
    )
    group.add_argument("--tracker_project_name", type=str, default=None, help="Project name of the trackers.")
    group.add_argument("--push_to_hub", action="store_true", help="Push the final model to the Hub.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Repo id (default: output_dir's name).")
    group.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the stored login).")
    group.add_argument("--hub_private", action="store_true", help="Create the Hub repo as private.")
    return group


def _check_positive(args: argparse.Namespace, name: str, allow_none: bool = False) -> None:
    value = getattr(args, name)
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`--{name}` must be a positive integer, got {value!r}")


def check_common_args(args: argparse.Namespace) -> None:
    """Validate the flags added by the ``add_*_args`` helpers; raise ``ValueError`` naming the flag.

    ``--dataset_name fashion_mnist`` (28x28 images) also switches ``--pad_to_resolution`` on: the images are
    padded, never resized.
    """
    if getattr(args, "dataset_name", None) is None and getattr(args, "train_data_dir", None) is None:
        if hasattr(args, "dataset_name"):
            raise ValueError("give `--dataset_name` or `--train_data_dir`, got neither")
    if getattr(args, "dataset_name", None) is not None and getattr(args, "train_data_dir", None) is not None:
        raise ValueError(
            f"give only one of `--dataset_name` ({args.dataset_name!r}) and `--train_data_dir` "
            f"({args.train_data_dir!r})"
        )
    for name in ("train_batch_size", "num_train_epochs", "gradient_accumulation_steps",
                 "checkpointing_steps", "validation_steps", "resolution"):
        if hasattr(args, name):
            _check_positive(args, name)
    for name in ("max_train_steps", "checkpoints_total_limit", "max_train_samples"):
        if hasattr(args, name):
            _check_positive(args, name, allow_none=True)
    if getattr(args, "lr_warmup_steps", 0) < 0:
        raise ValueError(f"`--lr_warmup_steps` must be >= 0, got {args.lr_warmup_steps}")
    if getattr(args, "learning_rate", 1.0) <= 0:
        raise ValueError(f"`--learning_rate` must be > 0, got {args.learning_rate}")
    resolve_report_to(getattr(args, "report_to", "none"), check_only=True)


# ============================================================================================ accelerate
    if _is_fashion_mnist(args) and hasattr(args, "pad_to_resolution"):
        args.pad_to_resolution = True


def resolve_report_to(report_to: str | None, check_only: bool = False) -> list[str]:
    """Turn ``--report_to`` into the list of installed trackers.

    ``"none"``/empty gives ``[]``; ``"all"`` every installed tracker among :data:`KNOWN_TRACKERS`. A named
    tracker that is not installed is dropped with a warning saying what to install (the run goes on; its
    metrics still reach ``metrics.jsonl``). An unknown name raises ``ValueError``.
    """
    import importlib.util

    names = [n.strip() for n in (report_to or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n, module in KNOWN_TRACKERS.items() if importlib.util.find_spec(module) is not None]
    unknown = [n for n in names if n not in KNOWN_TRACKERS]
    if unknown:
        raise ValueError(
            f"`--report_to` must name trackers among {sorted(KNOWN_TRACKERS)} (or 'all'/'none'), "
            f"got {unknown}"
        )
    if check_only:
        return names
    available = []
    for name in names:
        if importlib.util.find_spec(KNOWN_TRACKERS[name]) is None:
            logger.warning(
                "--report_to %s: %s is not installed (`pip install %s`); not logging to it. Metrics are "
                "still written to output_dir/logs/metrics.jsonl.", name, name, name,
            )
        else:
            available.append(name)
    return available


def reset_accelerate_state() -> None:
    """Reset accelerate's process-wide singletons so that another ``Accelerator`` can be built in this process.

    Needed when several trainings run one after the other in one process (the quickstart, the tests).
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def make_accelerator(args: argparse.Namespace):
    """Build the ``Accelerator`` (project folders, mixed precision, trackers, gradient accumulation) and seed.

    The data loaders it prepares shuffle with a seedable, epoch-dependent sampler
    (``use_seedable_sampler=True``): with ``loader.set_epoch(epoch)`` (done by :func:`iterate_epochs`) the
    order of every epoch is a function of ``--seed`` and the epoch, so a resumed run sees the same batches.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    project_config = ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir)
    trackers = resolve_report_to(args.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_config=project_config,
        # the shuffling seed is --seed on every process (by default accelerate takes the global seed, which
        # differs between processes below)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    from rq_hf.training.sharding import enable_fsdp_on_cpu

    enable_fsdp_on_cpu(accelerator)  # an FSDP config on CPU processes: FSDP2 over gloo (accelerate drops it)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint lines are noise
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if args.seed is not None:
        # --seed + process index: dropout, class dropout and stochastic codes differ between processes (the
        # data order does not: the loaders shuffle with their own generator seeded with --seed).
        set_seed(args.seed, device_specific=True)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def init_trackers(accelerator, args: argparse.Namespace, project_name: str) -> None:
    """Start the trackers with the run's flags as hyper-parameters (main process only; accelerate handles it).

    Values that trackers cannot store (None, lists) are turned into strings.
    """
    config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
    config.pop("hub_token", None)
    accelerator.init_trackers(args.tracker_project_name or project_name, config=config)


class MetricsLog:
    """Append-only JSON-lines log of the step metrics (main process): ``output_dir/logs/metrics.jsonl``.

    Always written, whatever the trackers, so runs (and tests) can read the curves back.
    """

    def __init__(self, accelerator, output_dir: str, logging_dir: str = "logs"):
        self.accelerator = accelerator
        self.path = os.path.join(output_dir, logging_dir, "metrics.jsonl")
        if accelerator.is_main_process:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Send ``values`` to the trackers and append them (with ``step``) to the JSONL file."""
        self.accelerator.log(dict(values), step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")


# ============================================================================================ data


def _is_fashion_mnist(args: argparse.Namespace) -> bool:
    name = getattr(args, "dataset_name", None)
    return name == FASHION_MNIST_NAME and not os.path.isdir(name)


def load_train_dataset(args: argparse.Namespace, split: str = "train", label_column: str | None = None):
    """Load the training split named by the data flags, with ``--max_train_samples`` applied.

    ``--dataset_name fashion_mnist`` uses :func:`rq_hf.data.load_fashion_mnist`. Errors (no source, empty
    dataset, missing column) are ``ValueError``s from :func:`rq_hf.data.load_image_dataset` naming the flag.
    ``args`` is not changed.
    """
    from rq_hf.data import check_image_dataset, load_fashion_mnist, load_image_dataset

    if _is_fashion_mnist(args):
        dataset = load_fashion_mnist(split)
        check_image_dataset(dataset, image_column=args.image_column, label_column=label_column,
                            source="fashion_mnist")
    else:
        dataset = load_image_dataset(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir,
            split=split,
            cache_dir=args.cache_dir,
            image_column=args.image_column,
            label_column=label_column,
        )
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset


def make_train_dataloader(dataset, args: argparse.Namespace, collate_fn, shuffle: bool = True):
    """A shuffling ``DataLoader`` (to be passed to ``accelerator.prepare``, which shards it).

    It owns a ``torch.Generator`` seeded with ``--seed``, so creating its iterators never draws from the
    global torch RNG (whose state checkpoints save and restore for the model's own randomness).
    """
    import torch

    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=shuffle,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=generator,
    )


# ============================================================================================ schedule


@dataclass
class Schedule:
    """Step bookkeeping computed from the *prepared* (sharded) dataloader length."""

    num_update_steps_per_epoch: int
    max_train_steps: int
    num_train_epochs: int
    batches_per_epoch: int


def compute_schedule(num_batches_per_epoch: int, args: argparse.Namespace) -> Schedule:
    """Optimisation steps per epoch, total steps and epochs (``--max_train_steps`` wins over epochs).

    Call it with ``len(prepared_dataloader)``: after ``accelerator.prepare`` the loader is sharded, so the
    steps are those of one process (diffusers' train_vqgan builds its scheduler before knowing this).
    """
    if num_batches_per_epoch < 1:
        raise ValueError(
            f"the training dataloader has {num_batches_per_epoch} batches per process; "
            "the dataset is smaller than the number of processes"
        )
    per_epoch = max(1, math.ceil(num_batches_per_epoch / args.gradient_accumulation_steps))
    if args.max_train_steps is None:
        max_steps = args.num_train_epochs * per_epoch
    else:
        max_steps = args.max_train_steps
    epochs = math.ceil(max_steps / per_epoch)
    return Schedule(per_epoch, max_steps, epochs, num_batches_per_epoch)


def make_lr_scheduler(optimizer, args: argparse.Namespace, schedule: Schedule, num_processes: int):
    """diffusers ``get_scheduler(--lr_scheduler)`` over ``schedule.max_train_steps``, ``--lr_warmup_steps``.

    Counts are multiplied by ``num_processes`` because a prepared scheduler steps once per process each
    optimisation step (accelerate's ``AcceleratedScheduler`` with ``split_batches=False``).
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=schedule.max_train_steps * num_processes,
    )


# ======================================================================================= progress / resume


@dataclass
class TrainingProgress:
    """Where the run stands; registered with ``accelerator.register_for_checkpointing`` so that
    ``save_state`` / ``load_state`` carry it.

    Attributes:
        global_step: optimisation steps done.
        epoch: current epoch.
        batches_in_epoch: batches of the current epoch already consumed by this process (skipped ones
            included), i.e. how many to skip with ``accelerator.skip_first_batches`` when resuming.
        num_skipped_images: undecodable images skipped so far (summed over processes).
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    num_skipped_images: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def iterate_epochs(dataloader, progress: TrainingProgress, schedule: Schedule) -> Iterator[tuple[int, Any]]:
    """Yield ``(epoch, batch)`` from ``progress.epoch`` on, skipping the batches a resumed run already saw.

    Sets the sampler's epoch (``dataloader.set_epoch``) so the shuffled order depends only on the seed and
    the epoch, tells the dataset's :class:`~rq_hf.data.ImageBatchTransform` the epoch (its seeded
    augmentations depend on it), uses ``accelerate.skip_first_batches`` for the first, partly consumed
    epoch (skipped batches are not loaded), and keeps ``progress.epoch`` / ``progress.batches_in_epoch``
    up to date. The caller stops it (``break``) when ``max_train_steps`` is reached.
    """
    from accelerate import skip_first_batches

    while progress.epoch < schedule.num_train_epochs:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(progress.epoch)
        transform = getattr(dataloader.dataset, "format", {}).get("format_kwargs", {}).get("transform")
        if hasattr(transform, "set_epoch"):  # per-row seeded augmentations (with_image_transform(seed=...))
            transform.set_epoch(progress.epoch)
        loader = dataloader
        if progress.batches_in_epoch > 0:
            loader = skip_first_batches(dataloader, progress.batches_in_epoch)
        for batch in loader:
            progress.batches_in_epoch += 1
            yield progress.epoch, batch
        progress.epoch += 1
        progress.batches_in_epoch = 0


def checkpoint_problem(path: str) -> str | None:
    """None when ``path`` is a complete checkpoint, else what is wrong with it.

    A checkpoint written by :func:`save_checkpoint` lists its files and their sizes in
    ``rq_hf_checkpoint.json``; all must be there. One written before that file existed must hold at least
    accelerate's model, optimizer and random-state files.
    """
    manifest = os.path.join(path, CHECKPOINT_MANIFEST)
    if not os.path.isfile(manifest):
        names = set(os.listdir(path)) if os.path.isdir(path) else set()
        needed = [n for n in ("optimizer.bin", "random_states_0.pkl") if n not in names]
        if not names & {"model.safetensors", "pytorch_model.bin"}:
            needed.insert(0, "model.safetensors")
        return f"no {CHECKPOINT_MANIFEST}, and {', '.join(needed)} missing" if needed else None
    try:
        with open(manifest, encoding="utf-8") as f:
            files = json.load(f)["files"]
        for name, size in files.items():
            full = os.path.join(path, name)
            if not os.path.isfile(full):
                return f"{name} is missing"
            if os.path.getsize(full) != size:
                return f"{name} has {os.path.getsize(full)} bytes instead of {size}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable {CHECKPOINT_MANIFEST} ({err})"
    return None


def _checkpoint_steps(output_dir: str) -> list[tuple[int, str]]:
    """``(step, name)`` of the ``checkpoint-<step>`` folders in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    return sorted((int(m.group(1)), name) for name in os.listdir(output_dir)
                  if (m := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name)))


def get_last_checkpoint(output_dir: str) -> str | None:
    """The complete ``checkpoint-<step>`` folder with the highest step in ``output_dir``, or None.

    Newer folders that are not complete (see :func:`checkpoint_problem`) are skipped with a warning naming
    them; staging folders of saves in progress or killed (hidden names) are never candidates.
    """
    for _, name in reversed(_checkpoint_steps(output_dir)):
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping the incomplete checkpoint %s: %s", path, problem)
    return None


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a folder to ``load_state`` from (or None: fresh run).

    ``"latest"`` picks :func:`get_last_checkpoint` (a fresh run, with a log line, when there is none); any
    other value must be an existing, complete checkpoint folder (``ValueError`` otherwise).
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        path = get_last_checkpoint(output_dir)
        if path is None:
            logger.info("--resume_from_checkpoint latest: no complete checkpoint in %s; new run", output_dir)
        return path
    if not os.path.isdir(resume_from_checkpoint):
        raise ValueError(
            "`--resume_from_checkpoint` must be 'latest' or an existing checkpoint folder, got "
            f"{resume_from_checkpoint!r} (not a folder)"
        )
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem is not None:
        raise ValueError(
            f"`--resume_from_checkpoint` must be a complete checkpoint folder, got {resume_from_checkpoint!r} "
            f"({problem})"
        )
    return resume_from_checkpoint


def resume_training(accelerator, args: argparse.Namespace, *state: Any) -> TrainingProgress:
    """A new :class:`TrainingProgress`, registered for checkpointing together with ``state`` (e.g. an EMA model),
    and restored with them from ``--resume_from_checkpoint`` when given: the run continues at the saved step,
    epoch and batch."""
    progress = TrainingProgress()
    for obj in (progress, *state):
        accelerator.register_for_checkpointing(obj)
    path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if path is not None:
        logger.info("Resuming from %s", path)
        accelerator.load_state(path)
        logger.info("Resumed at step %d (epoch %d, batch %d)", progress.global_step, progress.epoch,
                    progress.batches_in_epoch)
    return progress


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None = None) -> str:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>`` on EVERY process; returns the folder.

    Written into a hidden staging folder beside it (``rq_hf.models.atomic_save``) with a manifest of its files,
    and moved into place by the main process once all processes are done: a folder named
    ``checkpoint-<step>`` is always complete. Only then, with ``total_limit``, are the oldest checkpoints
    removed so that at most ``total_limit`` remain. A failed save (e.g. a full disk) leaves the earlier
    checkpoints as they were; the staging folder of a killed save is removed by the next save.
    """
    from accelerate.utils import broadcast_object_list

    from rq_hf.models.atomic_save import commit, new_staging_dir, remove_tree

    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    staging = [new_staging_dir(final) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(staging)  # every process writes into the main process's staging folder
    staging = staging[0]
    try:
        accelerator.save_state(staging)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {os.path.relpath(os.path.join(root, f), staging): os.path.getsize(os.path.join(root, f))
                     for root, _, names in os.walk(staging) for f in names}
            with open(os.path.join(staging, CHECKPOINT_MANIFEST), "w", encoding="utf-8") as f:
                json.dump({"step": step, "files": files}, f, indent=1)
            commit(staging, final, replace="all")
            logger.info("Saved state to %s", final)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if accelerator.is_main_process:  # `checkpoint-<step>.tmp`: staging of earlier versions, never resumable
        for name in os.listdir(output_dir):
            if _LEGACY_STAGING_RE.match(name):
                remove_tree(os.path.join(output_dir, name))
    if accelerator.is_main_process and total_limit is not None:
        older = [name for s, name in _checkpoint_steps(output_dir) if s != step]
        for name in older[: max(0, len(older) + 1 - total_limit)]:
            logger.info("Removing old checkpoint %s (--checkpoints_total_limit %d)", name, total_limit)
            remove_tree(os.path.join(output_dir, name))
    accelerator.wait_for_everyone()
    return final


def maybe_save_checkpoint(accelerator, args: argparse.Namespace, global_step: int) -> str | None:
    """:func:`save_checkpoint` when ``global_step`` is a multiple of ``--checkpointing_steps``."""
    if global_step % args.checkpointing_steps != 0:
        return None
    return save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)


# ============================================================================================ guards / hooks


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or infinite; the run stopped before the optimizer step and saved nothing."""


def reduce_step_values(accelerator, values: Mapping[str, Any]) -> dict[str, float]:
    """Average scalar tensors/numbers over processes with ONE all-reduce; returns Python floats.

    Also adds ``"nonfinite"``: the number of processes on which some value was NaN/inf (so that every
    process takes the same decision in :func:`guard_finite`).
    """
    import torch

    keys = list(values)
    local = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=accelerator.device).detach()
                         .reshape(()) for k in keys]) if keys else torch.zeros(0, device=accelerator.device)
    nonfinite = (~torch.isfinite(local)).any().float().reshape(1)
    total = torch.cat([torch.nan_to_num(local, nan=0.0, posinf=0.0, neginf=0.0), nonfinite])
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    n = accelerator.num_processes
    out = {k: float(total[i]) / n for i, k in enumerate(keys)}
    local_values = {k: float(local[i]) for i, k in enumerate(keys)}
    out["nonfinite"] = float(total[-1])
    # keep the non-finite local values visible in the error message
    for k, v in local_values.items():
        if not math.isfinite(v):
            out[k] = v
    return out


def guard_finite(values: Mapping[str, float], step: int, output_dir: str) -> None:
    """Raise :class:`NonFiniteLossError` when :func:`reduce_step_values` saw a NaN/inf on any process.

    Call it before ``backward``/``optimizer.step``: nothing is updated or saved after a non-finite loss,
    so the last checkpoint (named in the message) stays the last good state.
    """
    if values.get("nonfinite", 0.0) <= 0:
        return
    bad = {k: v for k, v in values.items() if k != "nonfinite" and not math.isfinite(v)}
    last = get_last_checkpoint(output_dir)
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (on {int(values['nonfinite'])} process(es); values "
        f"{bad or 'on another process'}); stopped before the optimizer step. The last good checkpoint is "
        f"{last or 'none (no checkpoint saved yet)'}; "
        "resume from it with a lower --learning_rate (or check the data)."
    )


def count_skipped_images(accelerator, batch: Mapping[str, Any], progress: TrainingProgress,
                         key: str = "pixel_values") -> bool:
    """Account for the undecodable images of a :func:`rq_hf.data.collate_images` batch, on every process.

    One all-reduce sums ``batch["num_skipped"]`` and the number of processes whose ``batch[key]`` is None
    (every row of their batch was dropped); the count is added to ``progress.num_skipped_images`` with a
    warning. Returns True when the batch must be skipped: then *every* process skips it together (under
    DDP a process that skipped alone would leave the others waiting in the gradient all-reduce).
    """
    import torch

    flags = torch.tensor([float(batch.get("num_skipped", 0)), float(batch[key] is None)],
                         device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    if flags[0] > 0:
        progress.num_skipped_images += int(flags[0])
        logger.warning("Skipped %d undecodable image(s) in this batch (%d so far)", int(flags[0]),
                       progress.num_skipped_images)
    return bool(flags[1] > 0)


# ======================================================================================= final save / Hub


def training_card_section(description: str, args: argparse.Namespace | None = None) -> str:
    """The `## Training` section of a trained model's card: `description`, then the flags of the run (not the
    Hub token)."""
    section = description.strip() + "\n"
    if args is not None:
        flags = {k: v for k, v in sorted(vars(args).items()) if k != "hub_token"}
        section += "\nTraining flags:\n\n```json\n" + json.dumps(flags, indent=2, default=str) + "\n```\n"
    return section


def hub_repo_id(args: argparse.Namespace) -> str:
    """``--hub_model_id``, or the name of ``--output_dir``."""
    return args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))


def save_and_push(model, args: argparse.Namespace, *, metrics: dict[str, Any], description: str) -> str | None:
    """Save the trained `model` (an rq-hf model or pipeline) into ``--output_dir`` with its model card, the card
    listing `metrics` and a `## Training` section (`description` and the flags); with ``--push_to_hub``, upload
    that folder, card included (checkpoints stay local). Returns the Hub repo id, or `None` without a push.
    """
    from rq_hf.models.hub_utils import push_folder_to_hub

    repo_id = hub_repo_id(args) if args.push_to_hub else None
    sections = {"Training": training_card_section(description, args)}
    model.save_pretrained(args.output_dir, metrics=metrics, repo_id=repo_id, model_card_kwargs={"sections": sections})
    if repo_id is not None:
        push_folder_to_hub(args.output_dir, repo_id, commit_message="End of training", private=args.hub_private,
                           token=args.hub_token)
    return repo_id


# ============================================================================================ command line


def run_script(script: str, argv: list[str]) -> None:
    """Run ``python <script> <argv>`` in a process of its own, as a user would from a shell.

    Raises ``RuntimeError`` naming the command and its exit status when it fails (its output went to the
    terminal).
    """
    import shlex
    import subprocess

    command = [sys.executable, script, *argv]
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        raise RuntimeError(f"`{shlex.join(['python', script, *argv])}` failed with exit status {returncode}")


def run_cli(
    main: Callable[[list[str] | None], Any],
    build_parser: Callable[[], argparse.ArgumentParser],
    argv: list[str] | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> None:
    """The ``__main__`` entry of a script: run ``main(argv)``, reporting errors of the call as argparse does.

    A bad flag or input (``ValueError``, ``FileNotFoundError``, ``FileExistsError``, ``NotADirectoryError`` or
    one of ``errors``) prints the script's usage line and ``<prog>: error: <message>`` and exits with status 2,
    instead of a traceback; a run stopped by :class:`NonFiniteLossError` prints its message and exits with 1.
    """
    try:
        main(argv)
    except NonFiniteLossError as err:
        print(f"{build_parser().prog}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, *errors) as err:
        build_parser().error(str(err))
