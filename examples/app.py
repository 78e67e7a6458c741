#!/usr/bin/env python
"""A Gradio app for an RQ-Transformer pipeline: sampling, image completion and the coarse-to-fine depth view.

    pip install -e ".[demo]"
    python examples/app.py                                  # the quickstart's pipeline, quickstart/pipeline
    python examples/app.py --model_path rq-in-480m --port 7860
    python examples/app.py --model_path user/name           # a Hub repository

Then open http://127.0.0.1:7860. The app has two tabs:

- **Generate**: a class picker filled from the model's class names (a prompt box for text-conditional models,
  nothing for unconditional ones), classifier-free guidance, top-k / top-p / temperature, seed (image ``i``
  uses ``seed + i``, as ``examples/generate.py``), number of images, and a progress bar over the code
  positions. Below the samples, the *coarse-to-fine* view of the selected sample: the images decoded from the
  first 1, 2, ..., D depths of its codes.
- **From an image**: upload an image; *Complete* keeps its first N code positions (raster order) and samples
  the rest; *Coarse to fine* shows the same depth view for the uploaded image's codes.

On a Hugging Face Space, put this file at the Space's root as ``app.py``, list rq-hf with its ``demo`` extra in
its ``requirements.txt`` and set the variable ``RQ_HF_MODEL_PATH`` to the pipeline's Hub id (the Space runs
``python app.py``; Gradio takes the host and port from the Space's environment).
"""

import argparse
import math
import os
import re
from typing import Callable

DEFAULT_MODEL_PATH = "quickstart/pipeline"
MAKE_DEFAULT_MODEL = "python examples/quickstart.py --output_dir quickstart"
# Images are shown enlarged (nearest neighbour) to at least this many pixels per side.
DISPLAY_SIZE = 128
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Gradio app for an RQ-Transformer pipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        default=os.environ.get("RQ_HF_MODEL_PATH", DEFAULT_MODEL_PATH),
        help="Pipeline folder (save_pretrained) or Hub id; default: $RQ_HF_MODEL_PATH, else the quickstart's.",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available).")
    parser.add_argument("--host", default=None, help="Server address (default: Gradio's, 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="Server port (default: Gradio's, 7860).")
    parser.add_argument("--max_images", type=int, default=16, help="Largest number of images per request.")
    parser.add_argument("--share", action="store_true", help="Also open a public Gradio share link.")
    return parser


# ---------------------------------------------------------------------------------------- the model
def load_pipeline(model_path: str, device: str | None = None):
    """Load an `RQTransformerPipeline` from a folder or a Hub id, with a how-to message when it is missing."""
    import torch

    from rq_hf import RQTransformerPipeline

    if not os.path.isdir(model_path):
        if model_path == DEFAULT_MODEL_PATH or not _HUB_ID.match(model_path):
            raise SystemExit(
                f"--model_path: no pipeline folder at {model_path!r}. Make the quickstart's with\n"
                f"    {MAKE_DEFAULT_MODEL}\n(about 10 minutes on 2 CPU cores; it writes quickstart/pipeline), or "
                "pass --model_path with a pipeline folder or a Hub id."
            )
    try:
        pipe = RQTransformerPipeline.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"--model_path: could not load a pipeline from {model_path!r} ({type(error).__name__}: {error}). "
            f"Make one with `{MAKE_DEFAULT_MODEL}` or pass a pipeline folder or Hub id."
        ) from error
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def condition_kind(pipe) -> str:
    """`"text"`, `"class"` or `"none"`: what the pipeline's transformer is conditioned on.

    Text-conditional pipelines are recognised by their config's `condition_type` or a `tokenizer` component,
    so the app needs no change when they exist.
    """
    kind = getattr(pipe.transformer.config, "condition_type", None)
    if kind == "text" or getattr(pipe, "tokenizer", None) is not None:
        return "text"
    return "class" if pipe.transformer.config.num_classes is not None else "none"


def class_choices(pipe) -> list[str]:
    """Class names in class-id order (the id itself where a class has no name)."""
    names = pipe.id2label
    return [names.get(i, str(i)) for i in range(pipe.transformer.config.num_classes or 0)]


def _class_id(pipe, class_name: str) -> int:
    choices = class_choices(pipe)
    if class_name not in choices:
        raise ValueError(f"`class_name` must be one of {choices}, got {class_name!r}.")
    return choices.index(class_name)


def _condition_kwargs(pipe, num_images: int, class_name: str | None, prompt: str | None) -> dict:
    kind = condition_kind(pipe)
    if kind == "text":
        return {"prompt": [prompt or ""] * num_images}
    if kind == "class":
        return {"class_labels": [_class_id(pipe, class_name)] * num_images}
    return {"num_images": num_images}


def _sampling_kwargs(top_k: int, top_p: float, temperature: float, guidance_scale: float) -> dict:
    """Widget values to pipeline arguments: top-k 0 and top-p 1 switch the filter off."""
    return {
        "top_k": int(top_k) if top_k and top_k > 0 else None,
        "top_p": float(top_p) if top_p is not None and 0 < top_p < 1 else None,
        "temperature": float(temperature),
        "guidance_scale": float(guidance_scale),
    }


def _progress_callback(pipe, progress: Callable[[int, int], None] | None):
    if progress is None:
        return None
    h, w, _ = pipe.transformer.config.code_shape

    def on_step_end(pipeline, step, timestep, tensors):
        progress(step + 1, h * w)
        return tensors

    return on_step_end


def sample_codes(
    pipe,
    num_images: int = 4,
    seed: int = 0,
    class_name: str | None = None,
    prompt: str | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    guidance_scale: float = 1.0,
    image=None,
    num_kept_positions: int = 0,
    progress: Callable[[int, int], None] | None = None,
):
    """Sample `num_images` code maps (long (B, h, w, D)); image `i` uses the seed `seed + i`.

    With `image`, its first `num_kept_positions` code positions (raster order) are kept (completion).
    `progress(done, total)` is called after each sampled position.
    """
    import torch

    num_images = int(num_images)
    if num_images < 1:
        raise ValueError(f"`num_images` must be at least 1, got {num_images}.")
    generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(num_images)]
    return pipe(
        **_condition_kwargs(pipe, num_images, class_name, prompt),
        **_sampling_kwargs(top_k, top_p, temperature, guidance_scale),
        generator=generators,
        image=image,
        num_prefix_positions=int(num_kept_positions) if image is not None else 0,
        output_type="latent",
        callback_on_step_end=_progress_callback(pipe, progress),
    ).images


def decode(pipe, codes) -> list:
    """PIL images decoded from codes (B, h, w, d), d <= D depths."""
    import torch

    with torch.no_grad():
        sample = pipe.vqvae.decode_codes(codes.to(pipe.device)).sample
    return pipe.image_processor.postprocess(sample.float(), output_type="pil")


def encode_image(pipe, image):
    """Codes (1, h, w, D) of a PIL image, resized to the model's image size."""
    import torch

    h, w, _ = pipe.transformer.config.code_shape
    factor = pipe.vqvae.downsample_factor
    image = image.convert("L" if pipe.vqvae.config.in_channels == 1 else "RGB")
    pixels = pipe.image_processor.preprocess(image, height=h * factor, width=w * factor)
    with torch.no_grad():
        return pipe.vqvae.encode(pixels.to(device=pipe.device, dtype=pipe.vqvae.dtype)).codes


def depth_views(pipe, codes) -> list:
    """Coarse to fine: the images decoded from the first 1, 2, ..., D depths of one code map (1, h, w, D)."""
    return [decode(pipe, codes[:1, ..., :depth])[0] for depth in range(1, codes.shape[-1] + 1)]


def kept_preview(pipe, image, num_kept_positions: int):
    """The reconstruction of `image` with the code positions from `num_kept_positions` on greyed out."""
    import numpy as np
    import PIL.Image

    reconstruction = np.array(decode(pipe, encode_image(pipe, image))[0])
    h, w, _ = pipe.transformer.config.code_shape
    factor = pipe.vqvae.downsample_factor
    for position in range(int(num_kept_positions), h * w):
        row, col = divmod(position, w)
        reconstruction[row * factor : (row + 1) * factor, col * factor : (col + 1) * factor] = 128
    return PIL.Image.fromarray(reconstruction)


def enlarge(image, size: int = DISPLAY_SIZE):
    """`image` scaled by an integer factor (nearest neighbour) to at least `size` pixels per side."""
    import PIL.Image

    scale = max(1, math.ceil(size / min(image.size)))
    return image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)


# ---------------------------------------------------------------------------------------- the app
def build_demo(pipe, model_path: str = "", max_images: int = 16):
    """The Gradio `Blocks` of the app for `pipe` (launch it with `demo.launch(theme=THEME)`)."""
    import gradio as gr

    kind = condition_kind(pipe)
    h, w, depth = pipe.transformer.config.code_shape
    num_positions = h * w
    classes = class_choices(pipe)
    guided = kind != "none"

    def depth_items(codes):
        return [(enlarge(image), f"depth 1-{d}" if d > 1 else "depth 1") for d, image in
                enumerate(depth_views(pipe, codes), start=1)]

    def report(progress: gr.Progress):
        return lambda done, total: progress((done, total), desc="Sampling code positions", unit="positions")

    def on_generate(class_name, prompt, guidance, top_k, top_p, temperature, seed, num_images,
                    progress=gr.Progress()):
        codes = sample_codes(pipe, num_images, seed, class_name, prompt, top_k, top_p, temperature, guidance,
                             progress=report(progress))
        tag = {"class": class_name, "text": prompt}.get(kind)
        captions = [f"{tag} · seed {int(seed) + i}" if tag else f"seed {int(seed) + i}" for i in range(len(codes))]
        images = [(enlarge(image), caption) for image, caption in zip(decode(pipe, codes), captions)]
        return images, codes.cpu(), depth_items(codes[:1])

    def on_select(codes, evt: gr.SelectData):
        if codes is None:
            return gr.skip()
        return depth_items(codes[evt.index : evt.index + 1])

    def on_complete(image, num_kept, class_name, prompt, guidance, top_k, top_p, temperature, seed, num_images,
                    progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload an image first.")
        codes = sample_codes(pipe, num_images, seed, class_name, prompt, top_k, top_p, temperature, guidance,
                             image=image, num_kept_positions=num_kept, progress=report(progress))
        kept = (enlarge(kept_preview(pipe, image, num_kept)), f"kept: {int(num_kept)} of {num_positions}")
        return [kept] + [(enlarge(im), f"seed {int(seed) + i}") for i, im in enumerate(decode(pipe, codes))]

    def on_depths(image):
        if image is None:
            raise gr.Error("Upload an image first.")
        return depth_items(encode_image(pipe, image))

    def gallery(label, elem_id, columns=4, height=420, **kwargs):  # PNG: the pixels as decoded, enlarged
        return gr.Gallery(label=label, columns=columns, height=height, format="png", object_fit="contain",
                          elem_id=elem_id, **kwargs)

    def depth_row(elem_id):  # one row, D images of the same size as the samples
        return gallery("Coarse to fine", elem_id, columns=max(depth, 4), height=220, fit_columns=False)

    vae_cfg = pipe.vqvae.config
    with gr.Blocks(title="RQ-Transformer", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## RQ-Transformer · `{model_path}`\n"
            f"Each image is {h}×{w} positions × {depth} residual codes from {vae_cfg.codebook_size} "
            f"({num_positions} autoregressive steps). Condition: **{kind}**"
            + (f", {len(classes)} classes." if kind == "class" else ".")
        )
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Dropdown(classes, value=classes[0] if classes else None, label="Class",
                                         visible=kind == "class", elem_id="class-picker")
                prompt = gr.Textbox(label="Prompt", visible=kind == "text", elem_id="prompt")
                guidance = gr.Slider(1.0, 10.0, value=2.0 if guided else 1.0, step=0.1, visible=guided,
                                     label="Guidance scale (1 = none)", elem_id="guidance")
                num_images = gr.Slider(1, max_images, value=min(4, max_images), step=1, label="Number of images",
                                       elem_id="num-images")
                seed = gr.Number(0, precision=0, label="Seed (image i uses seed + i)", elem_id="seed")
                with gr.Accordion("Sampling", open=False):
                    top_k = gr.Slider(0, vae_cfg.codebook_size, value=0, step=1, label="Top-k (0 = off)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature")
            with gr.Column(scale=2):
                with gr.Tab("Generate"):
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    samples = gallery("Samples", "samples")
                    codes_state = gr.State(None)
                    gr.Markdown("Coarse to fine: the selected sample decoded from its first 1, 2, ... depths.")
                    sample_depths = depth_row("sample-depths")
                with gr.Tab("From an image"):
                    upload = gr.Image(type="pil", label="Image", elem_id="upload", height=256)
                    num_kept = gr.Slider(0, num_positions, value=num_positions // 2, step=1,
                                         label=f"Kept code positions (raster order, of {num_positions})",
                                         elem_id="num-kept")
                    with gr.Row():
                        complete_button = gr.Button("Complete", variant="primary", elem_id="complete")
                        depths_button = gr.Button("Coarse to fine", elem_id="depths")
                    completions = gallery("Kept part and completions", "completions")
                    upload_depths = depth_row("upload-depths")

        sampling = [guidance, top_k, top_p, temperature, seed, num_images]
        generate_button.click(on_generate, [class_name, prompt] + sampling, [samples, codes_state, sample_depths])
        samples.select(on_select, codes_state, sample_depths)
        complete_button.click(on_complete, [upload, num_kept, class_name, prompt] + sampling, completions)
        depths_button.click(on_depths, upload, upload_depths)
    return demo


def theme():
    """Gradio's default theme with the system fonts (the default one fetches web fonts: none offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_images < 1:
        raise SystemExit(f"--max_images must be at least 1, got {args.max_images}.")
    pipe = load_pipeline(args.model_path, args.device)
    demo = build_demo(pipe, args.model_path, args.max_images)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme(),
                        show_error=True)


if __name__ == "__main__":
    main()
