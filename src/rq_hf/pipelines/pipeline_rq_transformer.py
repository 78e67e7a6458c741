"""RQTransformerPipeline: text-to-image, class-conditional or unconditional generation with an RQ-VAE and an
RQ-Transformer.

The pipeline samples a code map with the transformer's `generate_codes` and decodes it with the RQ-VAE; a
text-conditional transformer gets its caption token ids from the pipeline's `tokenizer` (a transformers
`PreTrainedTokenizerFast`, saved in `tokenizer/`).
A saved pipeline folder carries the code of the pipeline and of both models, so that
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it even where `rq_hf` is not
installed, while `RQTransformerPipeline.from_pretrained(folder)` uses the installed `rq_hf` classes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..lora import RQTransformerLoraLoaderMixin
from ..models.atomic_save import commit  # noqa: F401  (hub_utils needs the file; diffusers copies only direct imports)
from ..models.checks import GUIDANCE_SCHEDULES, check_choice, check_generator, check_int, check_sampling_args
from ..models.hub_utils import RQHubMixin, copy_module_sources, describe_folder, prepare_pretrained_path
from ..models.tokenization_rq_transformer import tokenize_captions

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Files that hold each component's class in a saved folder (the folder's remote code).
_COMPONENT_FILES = {"vqvae": "autoencoder_rqvae", "transformer": "modeling_rq_transformer"}
_PIPELINE_FILE = "pipeline_rq_transformer"


def _as_size(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class RQTransformerPipeline(RQHubMixin, RQTransformerLoraLoaderMixin, DiffusionPipeline):
    r"""Image generation with an RQ-Transformer over the residual codes of an RQ-VAE.

    Args:
        vqvae ([`RQVAEModel`]): encodes images to codes (B, h, w, D) and decodes codes to images.
        transformer ([`RQTransformerForCausalImageModeling`]): models the codes autoregressively.
        id2label (`dict[int, str]`, *optional*): class names of a class-conditional transformer; when given,
            the pipeline keeps them (and saves them in `model_index.json`) in place of `transformer.config.id2label`,
            which stays as it is. As in `DiTPipeline`, a name may list synonyms separated by commas.
        tokenizer ([`PreTrainedTokenizerFast`], *optional*): the caption tokenizer of a text-conditional
            transformer (required for one, refused for others); its padding token must be the transformer's
            `text_pad_token_id` and its vocabulary fit in `text_vocab_size`.

    LoRA adapters (`rq_hf.lora`): `load_lora_weights(folder)`, `fuse_lora()` / `unfuse_lora()`,
    `unload_lora_weights()`.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _optional_components = ["tokenizer"]
    _callback_tensor_inputs = ["codes"]

    def __init__(self, vqvae, transformer, id2label: dict[int, str] | None = None, tokenizer=None):
        super().__init__()
        self._check_components(vqvae, transformer)
        self._check_tokenizer(tokenizer, transformer)
        if id2label is not None:
            if transformer.config.num_classes is None:
                raise ValueError("`id2label` was given but the transformer is unconditional (num_classes=None).")
            id2label = {int(k): str(v) for k, v in id2label.items()}
            if sorted(id2label) != list(range(transformer.config.num_classes)):
                last = transformer.config.num_classes - 1
                raise ValueError(f"`id2label` must name the classes 0..{last}, got ids {sorted(id2label)}.")
        self.register_modules(vqvae=vqvae, transformer=transformer, tokenizer=tokenizer)
        self.register_to_config(id2label=id2label)
        self._id2label = id2label
        self._interrupt = False
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=vqvae.downsample_factor,
            do_convert_grayscale=vqvae.config.in_channels == 1,
        )

    @staticmethod
    def _check_components(vqvae, transformer) -> None:
        vae_cfg, tf_cfg = vqvae.config, transformer.config
        h, w, depth = tf_cfg.code_shape
        height, width = _as_size(vae_cfg.sample_size)
        grid = (height // vqvae.downsample_factor, width // vqvae.downsample_factor)
        mismatches = []
        if vae_cfg.codebook_size != tf_cfg.vocab_size:
            mismatches.append(
                f"vqvae.config.codebook_size={vae_cfg.codebook_size} != "
                f"transformer.config.vocab_size={tf_cfg.vocab_size}"
            )
        if vae_cfg.code_depth != depth:
            mismatches.append(f"vqvae.config.code_depth={vae_cfg.code_depth} != transformer code depth {depth}")
        if grid != (h, w):
            mismatches.append(
                f"vqvae latent grid {grid} (sample_size {vae_cfg.sample_size} / {vqvae.downsample_factor}) != "
                f"transformer.config.code_shape[:2]={(h, w)}"
            )
        if mismatches:
            raise ValueError("`vqvae` and `transformer` do not fit together: " + "; ".join(mismatches))

    @staticmethod
    def _check_tokenizer(tokenizer, transformer) -> None:
        config = transformer.config
        if config.condition_type != "text":
            if tokenizer is not None:
                raise ValueError(
                    "`tokenizer` must be None: the transformer is not text-conditional "
                    f"(condition_type={config.condition_type!r}), got {type(tokenizer).__name__}."
                )
            return
        if tokenizer is None:
            raise ValueError(
                "`tokenizer` is required: the transformer is text-conditional "
                f"(text_vocab_size={config.text_vocab_size}), got None."
            )
        if tokenizer.pad_token_id != config.text_pad_token_id:
            raise ValueError(
                f"`tokenizer` must pad with the transformer's text_pad_token_id={config.text_pad_token_id}, "
                f"got pad_token_id={tokenizer.pad_token_id} ({tokenizer.pad_token!r})."
            )
        if len(tokenizer) > config.text_vocab_size:
            raise ValueError(
                f"`tokenizer` must have at most text_vocab_size={config.text_vocab_size} tokens, "
                f"got {len(tokenizer)}."
            )

    # ------------------------------------------------------------------ class names
    @property
    def id2label(self) -> dict[int, str]:
        """Class id -> name of a class-conditional transformer (empty for unconditional ones)."""
        if self.transformer.config.num_classes is None:
            return {}
        return {int(k): v for k, v in (self._id2label or self.transformer.config.id2label or {}).items()}

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in `callback_on_step_end` to stop sampling (as in diffusers pipelines)."""
        return self._interrupt

    @property
    def labels(self) -> dict[str, int]:
        """Name -> class id, each comma-separated synonym of a name listed on its own (as `DiTPipeline`)."""
        labels = {}
        for key, value in self.id2label.items():
            for label in str(value).split(","):
                labels[label.strip()] = int(key)
        return dict(sorted(labels.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Map class names to class ids, as `DiTPipeline.get_label_ids`."""
        names = [label] if isinstance(label, str) else list(label)
        labels = self.labels
        unknown = [name for name in names if name not in labels]
        if unknown:
            raise ValueError(
                f"`class_labels` {unknown} are not class names of this model; known names: {list(labels)}."
            )
        return [labels[name] for name in names]

    def _class_label_tensor(self, class_labels, num_images: int | None) -> tuple[torch.Tensor | None, int]:
        num_classes = self.transformer.config.num_classes
        if class_labels is None:
            if num_classes is not None:
                raise ValueError(
                    f"`class_labels` is required: the transformer is class-conditional ({num_classes} classes)."
                )
            num_images = 1 if num_images is None else num_images
            check_int("num_images", num_images)
            return None, num_images
        if num_classes is None:
            raise ValueError(f"`class_labels` must be None for an unconditional transformer, got {class_labels!r}.")
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (int, np.integer, str)):
            class_labels = [class_labels]
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                ids.extend(self.get_label_ids(label))
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                ids.append(int(label))
            else:
                raise TypeError(f"`class_labels` items must be ints or class names, got {label!r}.")
        out_of_range = [i for i in ids if not 0 <= i < num_classes]
        if out_of_range:
            raise ValueError(f"`class_labels` must lie in [0, {num_classes}), got {out_of_range}.")
        if num_images is not None and num_images != len(ids):
            raise ValueError(
                f"`num_images` ({num_images}) must be None or equal the number of class labels ({len(ids)})."
            )
        return torch.tensor(ids, dtype=torch.long), len(ids)

    # ------------------------------------------------------------------ prompts
    def tokenize_prompt(self, prompt: str | list[str]) -> torch.LongTensor:
        """Caption token ids of a text-conditional transformer, long (len(prompt), max_text_length): lowercased
        and tokenized by the pipeline's tokenizer, padded / truncated to the transformer's `max_text_length`."""
        if self.tokenizer is None:
            raise ValueError("`prompt` needs a text-conditional pipeline (with a tokenizer); this one has none.")
        return tokenize_captions(self.tokenizer, prompt, self.transformer.config.max_text_length)

    @staticmethod
    def _prompt_list(name: str, prompt: Any) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"`{name}` must be a string or a non-empty list of strings, got {prompt!r}.")
        return list(prompts)

    def _condition(
        self, class_labels, prompt, negative_prompt, num_images, num_images_per_prompt
    ) -> tuple[dict[str, Any], int]:
        """The condition arguments of `generate_codes` and the number of images."""
        check_int("num_images_per_prompt", num_images_per_prompt)
        config = self.transformer.config
        kind = config.condition_type
        if kind != "text":
            if prompt is not None or negative_prompt is not None:
                name = "prompt" if prompt is not None else "negative_prompt"
                instead = (
                    f"class-conditional ({config.num_classes} classes): pass `class_labels`"
                    if kind == "class"
                    else "unconditional: pass `num_images`"
                )
                raise ValueError(f"`{name}` is only for text-conditional transformers; this transformer is {instead}.")
            if kind == "none" and num_images_per_prompt != 1:
                raise ValueError(
                    "`num_images_per_prompt` must be 1 for an unconditional transformer (use `num_images`), "
                    f"got {num_images_per_prompt}."
                )
            labels, batch_size = self._class_label_tensor(class_labels, num_images)
            if labels is None:
                return {}, batch_size
            return {"class_labels": labels.repeat_interleave(num_images_per_prompt)}, batch_size * num_images_per_prompt

        if class_labels is not None:
            raise ValueError(
                "`class_labels` must be None for a text-conditional transformer: pass the caption as `prompt=`, "
                f"got class_labels={class_labels!r}."
            )
        if prompt is None:
            raise ValueError("`prompt` is required: the transformer is text-conditional, got None.")
        prompts = self._prompt_list("prompt", prompt)
        batch_size = len(prompts) * num_images_per_prompt
        if num_images is not None and num_images != batch_size:
            raise ValueError(
                f"`num_images` ({num_images}) must be None or equal len(prompt) * num_images_per_prompt ({batch_size})."
            )
        kwargs = {"text_ids": self.tokenize_prompt(prompts).repeat_interleave(num_images_per_prompt, dim=0)}
        if negative_prompt is not None:
            negatives = self._prompt_list("negative_prompt", negative_prompt)
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"`negative_prompt` must be one string or one per prompt ({len(prompts)}), got {len(negatives)}."
                )
            negative_ids = self.tokenize_prompt(negatives).repeat_interleave(num_images_per_prompt, dim=0)
            kwargs["negative_text_ids"] = negative_ids
        return kwargs, batch_size

    def _prefix_codes(self, image, batch_size: int, num_prefix_positions: int, device) -> torch.Tensor | None:
        h, w, _ = self.transformer.config.code_shape
        check_int("num_prefix_positions", num_prefix_positions, 0, h * w)
        if image is None:
            if num_prefix_positions:
                raise ValueError(
                    f"`num_prefix_positions` must be 0 when no `image` is given, got {num_prefix_positions}."
                )
            return None
        if num_prefix_positions == 0:
            raise ValueError(
                "`num_prefix_positions` must be > 0 when an `image` is given (the number of its code positions to "
                "keep), got 0."
            )
        factor = self.vqvae.downsample_factor
        pixels = self.image_processor.preprocess(image, height=h * factor, width=w * factor)
        low, high = ((float(v) + 1) / 2 for v in torch.aminmax(pixels))  # preprocess maps [0, 1] to [-1, 1]
        if not (-0.25 <= low and high <= 1.25):  # NaN fails too; a small overshoot of resampling is fine
            raise ValueError(
                "`image` must be PIL images, uint8 arrays, or float arrays / tensors with values in [0, 1], got "
                f"float values in [{low:.4g}, {high:.4g}] (divide 0..255 values by 255)."
            )
        pixels = pixels.to(device=device, dtype=self.vqvae.dtype)
        codes = self.vqvae.encode(pixels).codes
        if codes.shape[0] == 1 and batch_size > 1:
            codes = codes.expand(batch_size, -1, -1, -1)
        if codes.shape[0] != batch_size:
            raise ValueError(f"`image` must hold 1 or {batch_size} images (one per sample), got {codes.shape[0]}.")
        return codes

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        num_images: int | None = None,
        top_k: int | list[int] | None = None,
        top_p: float | list[float] | None = None,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None,
        num_prefix_positions: int = 0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        compile: bool | str = False,
        guidance_schedule: str = "constant",
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            class_labels (`int | str | list[int | str] | torch.Tensor`, *optional*): class ids or names (resolved
                through `id2label`) of a class-conditional model, one per image (times `num_images_per_prompt`); `None`
                for other models.
            num_images (`int`, *optional*): number of images of an unconditional model (default 1); for
                conditional models `None` or the number of images the condition gives.
            top_k, top_p (`int` / `float` or a list, *optional*): sampling filters, one value or one per code depth.
            temperature (`float`, *optional*, defaults to `1.0`): softmax temperature (> 0).
            guidance_scale (`float`, *optional*, defaults to `1.0`): classifier-free guidance scale for class- and
                text-conditional models (1 = no guidance). The unconditional branch (the null class, or
                `negative_prompt` / the empty caption) runs in the same batch as the conditional one.
            guidance_schedule (`str`, *optional*, defaults to `"constant"`): `"constant"`, or a ramp of the scale
                over the code positions from 1 to `guidance_scale`: `"linear"` or `"cosine"` (see `generate_codes`).
            generator (`torch.Generator | list[torch.Generator]`, *optional*): a `torch.Generator`, or one per
                image for per-image reproducibility.
            image (`PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor`, *optional*): with
                `num_prefix_positions`, an image (or one per sample) whose first `num_prefix_positions` code positions
                (raster order) are kept while the rest is sampled (image completion).
            num_prefix_positions (`int`, *optional*, defaults to `0`): number of code positions taken from `image`.
            output_type (`str`, *optional*, defaults to `'pil'`): `"pil"` (list of PIL images), `"np"` ((B, H, W, C) in
                [0, 1]), `"pt"` ((B, C, H, W) in [0, 1]) or `"latent"` (the codes, long (B, h, w, D)).
            return_dict (`bool`, *optional*, defaults to `True`): return an `ImagePipelineOutput` (else a tuple).
            callback_on_step_end (`Callable[..., dict[str, Any]]`, *optional*): called as
                `callback_on_step_end(pipe, step, step, callback_kwargs)` after each sampled code position and returning
                a dict, as in diffusers; `callback_kwargs["codes"]` (B, h, w, D) holds the positions sampled so far
                (read-only: the key/value caches already hold them). Setting `pipe._interrupt = True` there stops
                sampling; the positions not sampled stay 0 and are decoded.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the names in `callback_kwargs`, among
                `_callback_tensor_inputs` (`["codes"]`, the default).
            prompt (`str | list[str]`, *optional*): the caption(s) of a text-conditional model, one per group of
                `num_images_per_prompt` images; refused by other models.
            negative_prompt (`str | list[str]`, *optional*): with `guidance_scale != 1`, the caption(s) of the
                unconditional branch (one, or one per prompt; ignored without guidance); default the empty caption.
            num_images_per_prompt (`int`, *optional*, defaults to `1`): images per prompt (or per class label).
            compile (`bool | str`, *optional*, defaults to `False`): decode with static key/value caches and
                `torch.compile`d steps (CUDA graphs on a GPU), as `generate_codes(compile=...)`: `True` or a
                `torch.compile` mode; the first call compiles.
        """
        check_choice("output_type", output_type, OUTPUT_TYPES)
        tensor_inputs = self._callback_tensor_inputs if callback_on_step_end_tensor_inputs is None else list(
            callback_on_step_end_tensor_inputs
        )
        if not set(tensor_inputs) <= set(self._callback_tensor_inputs):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, "
                f"got {tensor_inputs}."
            )
        # every argument is checked here, before any tokenizing, encoding or sampling (`generate_codes` runs the
        # same shared checks for its direct callers)
        check_sampling_args(top_k, top_p, temperature, guidance_scale, self.transformer.config.code_depth)
        check_choice("guidance_schedule", guidance_schedule, GUIDANCE_SCHEDULES)
        self._interrupt = False
        device = self._execution_device
        condition, batch_size = self._condition(
            class_labels, prompt, negative_prompt, num_images, num_images_per_prompt
        )
        if guidance_scale == 1.0:
            condition.pop("negative_text_ids", None)
        condition = {name: value.to(device) for name, value in condition.items()}
        generator = check_generator(generator, batch_size)
        prefix = self._prefix_codes(image, batch_size, num_prefix_positions, device)

        h, w, _ = self.transformer.config.code_shape
        with self.progress_bar(total=h * w) as progress_bar:

            def on_position(position: int, num_positions: int, codes: torch.Tensor) -> bool:
                progress_bar.update()
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, position, position, {name: codes for name in tensor_inputs})
                    if not isinstance(outputs, dict):
                        got = type(outputs).__name__
                        raise TypeError(f"`callback_on_step_end` must return a dict (as in diffusers), got {got}.")
                return self.interrupt  # True stops `generate_codes`

            # `generate_codes` is not `forward`: apply the offload hook of `enable_model_cpu_offload` to it
            generate_codes = apply_forward_hook(type(self.transformer).generate_codes)
            codes = generate_codes(
                self.transformer,
                batch_size=batch_size,
                **condition,
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule,
                generator=generator,
                prefix_codes=prefix,
                num_prefix_positions=num_prefix_positions,
                callback=on_position,
                compile=compile,
            )

        if output_type == "latent":
            images = codes
        else:
            sample = self.vqvae.decode_codes(codes.to(device)).sample
            images = self.image_processor.postprocess(sample.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ------------------------------------------------------------------ saving, loading, sharing
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, strict: bool = True, **kwargs):
        """Load a pipeline saved with `save_pretrained`: a local folder or a Hub repository id.

        Components load with the installed `rq_hf` classes (the code saved in the folder serves
        `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` instead). Accepts `dtype` (or a dict
        name -> dtype), `revision`, `cache_dir`, `token`, `local_files_only`; components may be passed as
        `vqvae=` / `transformer=` / `tokenizer=`. Loading is strict: a component whose weights do not match its
        config (missing, unexpected or differently shaped weights) raises, naming them; `strict=False` loads a
        changed architecture on purpose (missing weights newly initialised, unexpected ones ignored). The
        tokenizer of a text-conditional pipeline loads from `tokenizer/` with transformers.
        """
        prepare_pretrained_path(pretrained_model_name_or_path)
        package = cls.__module__.rsplit(".", 2)[0]
        if not package.startswith("rq_hf"):  # this class was itself loaded from a folder's code
            return super(RQHubMixin, cls).from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        if not os.path.isdir(folder):
            folder = DiffusionPipeline.download(folder, **hub_kwargs)
        index_path = os.path.join(folder, "model_index.json")
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
        except FileNotFoundError:
            raise ValueError(
                f"{folder!r} has no model_index.json: not a pipeline folder"
                + (f" (it holds a {describe_folder(folder)})" if describe_folder(folder) else "")
                + ". Load a model folder with its own class (RQVAEModel / RQTransformerForCausalImageModeling)."
            ) from None
        except ValueError as err:
            raise ValueError(f"{index_path!r} is not valid JSON ({err}).") from None
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        id2label = kwargs.pop("id2label", None) or (index.get("id2label") if isinstance(index, dict) else None)
        components = {"tokenizer": kwargs.pop("tokenizer")} if "tokenizer" in kwargs else {}
        tokenizer_entry = index.get("tokenizer") or [None, None]
        if "tokenizer" not in components and tokenizer_entry[0] is not None:
            import transformers

            tokenizer_class = getattr(transformers, tokenizer_entry[1], transformers.AutoTokenizer)
            components["tokenizer"] = tokenizer_class.from_pretrained(os.path.join(folder, "tokenizer"))
        for name, module_file in _COMPONENT_FILES.items():
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            entry = index.get(name) if isinstance(index, dict) else None
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
                raise ValueError(f"{index_path!r} must name the `{name}` component as [module, class], got {entry!r}.")
            module = importlib.import_module(f"{package}.models.{module_file}")
            component_dtype = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype
            load_kwargs = {"dtype": component_dtype} if component_dtype is not None else {}
            components[name] = getattr(module, entry[1]).from_pretrained(
                os.path.join(folder, name), strict=strict, **load_kwargs, **kwargs
            )
        pipe = cls(**components, id2label=id2label)
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe

    _model_card_kind = "pipeline"

    def _model_card_config(self) -> dict[str, Any]:
        config = {"vqvae": self.vqvae._model_card_config(), "transformer": self.transformer._model_card_config()}
        if self.tokenizer is not None:
            config["tokenizer"] = {"class": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer)}
        return config

    def _model_card_extra(self) -> dict[str, Any]:
        return self.transformer._model_card_extra()

    def _model_card_class_names(self) -> list[str] | None:
        return [self.id2label[i] for i in sorted(self.id2label)] or None

    def _write_extra_files(self, folder: str) -> None:
        copy_module_sources(sys.modules[type(self).__module__].__file__, folder)
        index_path = os.path.join(folder, "model_index.json")
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        index["_class_name"] = [_PIPELINE_FILE, type(self).__name__]
        for name, module_file in _COMPONENT_FILES.items():
            component = getattr(self, name)
            copy_module_sources(sys.modules[type(component).__module__].__file__, os.path.join(folder, name))
            index[name] = [module_file, type(component).__name__]
        from transformers import PreTrainedTokenizerFast

        if isinstance(self.tokenizer, PreTrainedTokenizerFast):  # its transformers 4 and 5 name
            index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
