"""Model cards, Hub uploads and atomic saves shared by the rq-hf models and pipeline.

This file sits beside the model files and is imported relatively, so that a saved folder that carries
the model code (remote code) stays loadable without ``rq_hf`` installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

from huggingface_hub import HfApi, ModelCard, ModelCardData

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
}

_TITLES = {
    "pipeline": "RQ-Transformer image generation pipeline",
    "rqvae": "RQ-VAE image tokenizer",
    "rq_transformer": "RQ-Transformer",
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
) -> ModelCard:
    """Build the model card (``README.md``) of an rq-hf model or pipeline.

    Args:
        kind: ``"pipeline"``, ``"rqvae"`` or ``"rq_transformer"``.
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
    lines += ["", "## Citation", "", _CITATION, ""]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def push_folder_to_hub(
    write_folder: Callable[[str], None],
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Write a folder with ``write_folder(path)`` into a temporary directory and upload it to ``repo_id``.

    Checkpoint folders of a training run (``checkpoint-*``, ``step_*``, ``epoch_*``) are never uploaded.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(tmp)
        if not os.path.isfile(os.path.join(tmp, "README.md")):
            raise RuntimeError("the folder to upload has no model card (README.md)")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or "Upload with rq-hf",
            create_pr=create_pr,
            ignore_patterns=["step_*", "epoch_*", "checkpoint-*"],
        )


@contextlib.contextmanager
def atomic_save_directory(save_directory: str | os.PathLike) -> Iterator[str]:
    """Yield an empty staging folder beside ``save_directory``; move what was written there into place on success.

    A save that fails or is interrupted while writing leaves an earlier folder at ``save_directory``
    untouched and removes the staging folder. On success each top-level entry written replaces its
    namesake; other entries already in ``save_directory`` (e.g. a training run's ``checkpoint-*``) stay.
    """
    save_directory = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory` must be a folder, got the file {save_directory!r}.")
    parent, name = os.path.split(save_directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.saving-", dir=parent)
    try:
        yield staging
        os.makedirs(save_directory, exist_ok=True)
        for entry in sorted(os.listdir(staging)):
            source, target = os.path.join(staging, entry), os.path.join(save_directory, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                retired = tempfile.mkdtemp(prefix=f".{entry}.old-", dir=save_directory)
                os.replace(target, os.path.join(retired, entry))
                os.replace(source, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


class RQHubMixin:
    """Atomic `save_pretrained` with a model card, and `push_to_hub` that uploads exactly that folder.

    Mixed in before `ModelMixin` / `PreTrainedModel` / `DiffusionPipeline`. A class sets `_model_card_kind`
    and may override `_model_card_config`, `_model_card_class_names` and `_write_extra_files`.
    """

    _model_card_kind = "rqvae"

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

    def model_card(self, repo_id: str | None = None, metrics: dict[str, Any] | None = None) -> ModelCard:
        """The model card (`README.md`) that `save_pretrained` writes and `push_to_hub` uploads."""
        return build_model_card(
            self._model_card_kind,
            self._model_card_config(),
            repo_id=repo_id,
            class_names=self._model_card_class_names(),
            metrics=metrics,
            library_name="transformers" if self._model_card_kind == "rq_transformer" else "diffusers",
            **self._model_card_extra(),
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args,
        metrics: dict[str, Any] | None = None,
        repo_id: str | None = None,
        **kwargs,
    ) -> None:
        """Save as the base class does, plus a model card, atomically.

        Everything is written beside `save_directory` and moved into place once complete: an interrupted save
        leaves an earlier folder at that path intact. `metrics` (name -> value) are listed in the card; use
        `push_to_hub(repo_id)` to upload.
        """
        if kwargs.pop("push_to_hub", False):
            raise ValueError("`push_to_hub=True` is not supported here: call `.push_to_hub(repo_id)` instead.")
        if kwargs.pop("is_main_process", True) is False:
            return
        with atomic_save_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            self._write_extra_files(staging)
            self.model_card(repo_id=repo_id, metrics=metrics).save(os.path.join(staging, "README.md"))

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
        return push_folder_to_hub(
            lambda folder: self.save_pretrained(folder, metrics=metrics, repo_id=repo_id, **save_kwargs),
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
        )
