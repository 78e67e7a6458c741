"""Model cards, Hub uploads, atomic saves and checked loading shared by the rq-hf models and pipeline.

This file sits beside the model files and is imported relatively, so that a saved folder that carries
the model code (remote code) stays loadable without ``rq_hf`` installed.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .atomic_save import atomic_save_directory, finish_interrupted_commit

PIPELINE_TAG = "unconditional-image-generation"
TEXT_PIPELINE_TAG = "text-to-image"
BASE_TAGS = ["rq-hf", "rq-vae", "rq-transformer", "image-generation"]
PAPER = "https://arxiv.org/abs/2203.01941"

_CITATION = """```bibtex
@inproceedings{lee2022autoregressive,
  title={Autoregressive Image Generation using Residual Quantization},
  author={Lee, Doyup and Kim, Chiheon and Kim, Saehoon and Cho, Minsu and Han, Wook-Shin},
  booktitle={CVPR},
  year={2022}
}
```"""

_USAGE = {
    "pipeline": """```python
import torch
from rq_hf import RQTransformerPipeline

pipe = RQTransformerPipeline.from_pretrained("{repo_id}")
images = pipe({call_args}generator=torch.Generator().manual_seed(0)).images
images[0].save("sample.png")
```

Without `rq-hf` installed, the code saved in this folder loads it:
`DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)`.""",
    "rqvae": """```python
from rq_hf import RQVAEModel

vae = RQVAEModel.from_pretrained("{repo_id}")
codes = vae.encode(images).codes          # images: float (B, C, H, W) in [-1, 1]
reconstruction = vae.decode_codes(codes).sample
```""",
    "rq_transformer": """```python
import torch
from rq_hf import RQTransformerForCausalImageModeling

model = RQTransformerForCausalImageModeling.from_pretrained("{repo_id}")
codes = model.generate_codes({call_args}generator=torch.Generator().manual_seed(0))
```""",
    "lora": """```python
from rq_hf import RQTransformerPipeline

pipe = RQTransformerPipeline.from_pretrained(BASE_PIPELINE)  # the pipeline of the base transformer
pipe.load_lora_weights("{repo_id}")
```""",
}

_TITLES = {
    "pipeline": "RQ-Transformer image generation pipeline",
    "rqvae": "RQ-VAE image tokenizer",
    "rq_transformer": "RQ-Transformer",
    "lora": "LoRA adapter of an RQ-Transformer",
}


def build_model_card(
    kind: str,
    config: dict[str, Any],
    repo_id: str | None = None,
    class_names: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    license: str = "apache-2.0",
    library_name: str = "diffusers",
    extra_tags: list[str] | None = None,
    notes: str | None = None,
    example_prompt: str | None = None,
    sections: dict[str, str] | None = None,
) -> ModelCard:
    """Build the model card (``README.md``) of an rq-hf model or pipeline.

    Args:
        kind: ``"pipeline"``, ``"rqvae"``, ``"rq_transformer"`` or ``"lora"`` (an adapter folder).
        config: the configuration shown in the card (JSON-serialisable values).
        repo_id: the Hub id used in the usage snippet (a placeholder when ``None``).
        class_names: class names of a class-conditional model, in class-id order.
        metrics: measured figures (name -> value) to list; nothing is listed when ``None``.
        license: licence of the weights.
        library_name: ``library_name`` of the card metadata.
        extra_tags: tags added to the defaults.
        notes: free text appended to the description (e.g. provenance of converted weights).
        example_prompt: a caption of a text-conditional model: the usage snippet passes it and the card's
            pipeline tag is ``text-to-image``.
        sections: more sections (title -> Markdown), after the configuration (e.g. ``{"Training": ...}``).
    """
    if kind not in _USAGE:
        raise ValueError(f"`kind` must be one of {sorted(_USAGE)}, got {kind!r}.")
    repo = repo_id or "<user>/<model>"
    if example_prompt is not None:
        call_args = (
            f"prompt=[{json.dumps(example_prompt)}], guidance_scale=3.0, "
            if kind == "pipeline"
            else "text_ids=text_ids, "  # caption token ids (batch, max_text_length), see the notes
        )
    elif class_names:
        call_args = f"class_labels=[{json.dumps(class_names[0])}], " if kind == "pipeline" else "class_labels=[0], "
    elif kind == "pipeline":
        call_args = "num_images=4, "
    else:
        call_args = "batch_size=4, "
    data = ModelCardData(
        license=license,
        library_name=library_name,
        pipeline_tag=TEXT_PIPELINE_TAG if example_prompt is not None else PIPELINE_TAG,
        tags=BASE_TAGS + list(extra_tags or []),
    )
    lines = [
        f"# {_TITLES[kind]}",
        "",
        f"Residual-quantized autoregressive image generation ([Lee et al., CVPR 2022]({PAPER})), "
        "packaged with [rq-hf](https://pypi.org/project/rq-hf/).",
    ]
    if notes:
        lines += ["", notes]
    lines += ["", "## Usage", "", _USAGE[kind].format(repo_id=repo, call_args=call_args)]
    if class_names:
        listed = ", ".join(f"{i}: {name}" for i, name in enumerate(class_names))
        lines += ["", "## Classes", "", listed]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in metrics.items()]
    lines += ["", "## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```"]
    for title, text in (sections or {}).items():
        lines += ["", f"## {title}", "", text.strip()]
    lines += ["", "## Citation", "", _CITATION, ""]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload the saved `folder`, model card (`README.md`) included, to the Hub repo `repo_id` (created if needed).

    Checkpoints of a training run (`checkpoint-*`, `step_*`, `epoch_*`) and hidden entries (staging folders of
    an atomic save) are never uploaded. Returns the `CommitInfo` of the upload.
    """
    if not os.path.isfile(os.path.join(folder, "README.md")):
        raise FileNotFoundError(f"`folder` must hold a model card (README.md) to upload, got {os.fspath(folder)!r}")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload with rq-hf",
        create_pr=create_pr,
        ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".*"],
    )


def tensors_on_meta(model: Any) -> list[str]:
    """Names of the parameters and buffers of `model` that sit on the meta device (no data)."""
    named = itertools.chain(model.named_parameters(), model.named_buffers())
    return [name for name, tensor in named if tensor.is_meta]


def copy_module_sources(module_file: str | os.PathLike, destination: str | os.PathLike) -> list[str]:
    """Copy a module file and, recursively, the sibling files it imports relatively into ``destination``.

    This is how a saved folder carries its own code, so that ``trust_remote_code=True`` loaders can use it.
    A relative import of a module one package up (``from ..models.x import``) is rewritten to a sibling
    import (``from .x import``) and its file is copied too: the saved folder is flat.
    Returns the names of the files written.
    """
    import re

    pattern = re.compile(r"^(\s*from\s+)\.+(?:\w+\.)*(\w+)(\s+import)", flags=re.MULTILINE)
    written, queue = [], [os.path.abspath(os.fspath(module_file))]
    while queue:
        source = queue.pop()
        name = os.path.basename(source)
        if name in written:
            continue
        with open(source, encoding="utf-8") as f:
            text = f.read()
        for match in pattern.finditer(text):
            relative = match.group(0).split("from", 1)[1].split("import")[0].strip()
            levels = len(relative) - len(relative.lstrip("."))
            parts = relative.lstrip(".").split(".")
            base = os.path.dirname(source)
            for _ in range(levels - 1):
                base = os.path.dirname(base)
            queue.append(os.path.join(base, *parts) + ".py")
        with open(os.path.join(destination, name), "w", encoding="utf-8") as f:
            f.write(pattern.sub(r"\1.\2\3", text))
        written.append(name)
    return written


def _format_names(names: Any, limit: int = 8) -> str:
    names = sorted(str(n) for n in names)
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def describe_folder(folder: str) -> str | None:
    """What a saved folder holds, from its `config.json` / `model_index.json` (None when neither is readable)."""
    for name in ("config.json", "model_index.json"):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        kind = config.get("_class_name") or config.get("model_type")
        if isinstance(kind, list):  # a pipeline saved with its code: [file, class]
            kind = kind[-1]
        if kind:
            return f"{kind} ({'pipeline' if name == 'model_index.json' else 'model'} folder)"
    return None


def prepare_pretrained_path(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, expected: tuple | None = None
) -> None:
    """Checks before `from_pretrained` reads `pretrained_model_name_or_path`.

    * A local path that does not exist is an error saying so (instead of a Hub "repo id" or connection error).
    * A save into the folder that a killed process left half-done is finished first
      (`atomic_save.finish_interrupted_commit`): the folder then holds the new save, complete.
    * `expected` = `(config key, value, loader hint)`: the folder's `config.json` must have that value, so that
      loading another kind of folder (e.g. an RQ-VAE folder into the transformer) names what the folder holds.
    """
    path = os.fspath(pretrained_model_name_or_path)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise ValueError(
                f"`pretrained_model_name_or_path` must be a folder or a Hub repo id, got the file {path!r}."
            )
        head = path.replace("\\", "/").split("/")[0]
        try:
            validate_repo_id(path)
            looks_local = path.count("/") == 1 and head not in ("", ".", "..") and os.path.isdir(head)
        except HFValidationError:
            looks_local = True
        if looks_local:
            raise FileNotFoundError(
                f"`pretrained_model_name_or_path` {path!r}: no such folder (and not a Hub repo id 'name' or "
                "'namespace/name')."
            )
        return
    for folder in (path, os.path.join(path, subfolder) if subfolder else None):
        if folder is not None and os.path.isdir(folder):
            finish_interrupted_commit(folder)
    folder = os.path.join(path, subfolder) if subfolder else path
    if expected is None:
        return
    key, value, hint = expected
    config_path = os.path.join(folder, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        held = describe_folder(folder)
        raise ValueError(
            f"{folder!r} has no config.json" + (f": it holds a {held}" if held else "") + f". {hint}"
        ) from None
    except ValueError as err:
        raise ValueError(f"{config_path!r} is not valid JSON ({err}).") from None
    if not isinstance(config, dict) or config.get(key) != value:
        held = describe_folder(folder) or "something else"
        raise ValueError(f"{folder!r} holds a {held}, not a {value}. {hint}")


def check_loading_info(model: Any, source: str, info: dict, strict: bool) -> None:
    """Raise when the weights of `source` did not fill the model built from its config (unless not `strict`).

    `info` is the `output_loading_info` dict of diffusers / transformers (`missing_keys`, `unexpected_keys`,
    `mismatched_keys`). With `strict=False`, weights missing from the file are initialised as in a new model
    (diffusers would leave them on the meta device) and unexpected ones are ignored.
    """
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"missing from the weights: {_format_names(missing)}")
        if unexpected:
            parts.append(f"in the weights but not in the model: {_format_names(unexpected)}")
        if mismatched:
            parts.append(f"of another shape: {_format_names(mismatched)}")
        raise ValueError(
            f"The weights in {source!r} do not match the {type(model).__name__} built from its config.json ("
            + "; ".join(parts)
            + "). The config and the weights must come from the same save; to load into a changed architecture "
            "on purpose (fine-tuning), pass `strict=False`: missing weights are then newly initialised and "
            "unexpected ones ignored."
        )
    # only the missing ones: weights offloaded by a `device_map` also sit on the meta device, on purpose
    on_meta = [name for name in tensors_on_meta(model) if name in missing]
    if on_meta:
        tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
        from accelerate.utils import set_module_tensor_to_device

        fresh = type(model).from_config(model.config)  # diffusers (transformers initialises missing weights)
        fresh_tensors = dict(itertools.chain(fresh.named_parameters(), fresh.named_buffers()))
        device = next((t.device for t in tensors.values() if not t.is_meta), "cpu")
        for name in on_meta:
            set_module_tensor_to_device(model, name, device, value=fresh_tensors[name].to(tensors[name].dtype))


class RQHubMixin:
    """Atomic `save_pretrained` with a model card, and `push_to_hub` that uploads exactly that folder.

    Mixed in before `ModelMixin` / `PreTrainedModel` / `DiffusionPipeline`. A class sets `_model_card_kind`
    and may override `_model_card_config`, `_model_card_class_names` and `_write_extra_files`.
    """

    _model_card_kind = "rqvae"
    #: `(config key, value, hint)` a folder's config.json must match (see `prepare_pretrained_path`).
    _expected_config: tuple | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """Load as the base class does, strictly: every weight of the model must be in the files and vice versa.

        Missing, unexpected or differently shaped weights raise a `ValueError` naming them (a config that does
        not match its weights). `strict=False` loads into a changed architecture on purpose (fine-tuning):
        missing weights are newly initialised, unexpected ones ignored. A local folder that does not exist is
        named as such, and a save into the folder that a killed process left half-done is finished first.
        """
        prepare_pretrained_path(pretrained_model_name_or_path, kwargs.get("subfolder"), cls._expected_config)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        check_loading_info(model, os.fspath(pretrained_model_name_or_path), info, strict)
        return (model, info) if wants_info else model

    def _model_card_config(self) -> dict[str, Any]:
        config = self.config
        items = config.to_diff_dict().items() if hasattr(config, "to_diff_dict") else dict(config).items()
        skip = {"id2label", "label2id", "architectures", "auto_map", "transformers_version", "dtype"}
        return {k: v for k, v in items if not k.startswith("_") and k not in skip}

    def _model_card_class_names(self) -> list[str] | None:
        return None

    def _write_extra_files(self, folder: str) -> None:
        """Hook: write files besides those of the base `save_pretrained` (e.g. code)."""

    def _model_card_extra(self) -> dict[str, Any]:
        """Hook: more keyword arguments of `build_model_card` (e.g. `example_prompt`, `notes`)."""
        return {}

    def model_card(
        self, repo_id: str | None = None, metrics: dict[str, Any] | None = None, **card_kwargs: Any
    ) -> ModelCard:
        """The model card (`README.md`) that `save_pretrained` writes and `push_to_hub` uploads.

        `card_kwargs` go to [`build_model_card`] (e.g. `sections`, `notes`, `license`, `extra_tags`).
        """
        kwargs = {
            "library_name": "transformers" if self._model_card_kind == "rq_transformer" else "diffusers",
            **self._model_card_extra(),
            **card_kwargs,
        }
        return build_model_card(
            self._model_card_kind,
            self._model_card_config(),
            repo_id=repo_id,
            class_names=self._model_card_class_names(),
            metrics=metrics,
            **kwargs,
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args,
        metrics: dict[str, Any] | None = None,
        repo_id: str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        """Save as the base class does, plus a model card, atomically.

        Everything is written beside `save_directory` and moved into place once complete: an interrupted save
        leaves an earlier folder at that path intact. `metrics` (name -> value) are listed in the card and
        `model_card_kwargs` go to [`build_model_card`] (e.g. `{"sections": {"Training": ...}}`); use
        `push_to_hub(repo_id)`, or [`push_folder_to_hub`] on the saved folder, to upload.
        """
        if kwargs.pop("push_to_hub", False):
            raise ValueError("`push_to_hub=True` is not supported here: call `.push_to_hub(repo_id)` instead.")
        if kwargs.pop("is_main_process", True) is False:
            return
        with atomic_save_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            self._write_extra_files(staging)
            card = self.model_card(repo_id=repo_id, metrics=metrics, **(model_card_kwargs or {}))
            card.save(os.path.join(staging, "README.md"))

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        metrics: dict[str, Any] | None = None,
        **save_kwargs,
    ):
        """Save into a temporary folder (weights, config, code, model card) and upload it to the Hub `repo_id`."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, metrics=metrics, repo_id=repo_id, **save_kwargs)
            return push_folder_to_hub(
                folder, repo_id, commit_message=commit_message, private=private, token=token, create_pr=create_pr
            )
