"""ONNX export of an RQ-VAE: an encoder graph (images -> codes) and a decoder graph (codes -> images).

    python -m rq_hf.export_onnx --model_path rqvae --output_dir rqvae-onnx
    python -m rq_hf.export_onnx --model_path quickstart/pipeline --output_dir rqvae-onnx   # a pipeline's RQ-VAE

writes, into ``--output_dir``:

- ``encoder.onnx``: input ``images`` float32 (batch, C, H, W) in [-1, 1]; output ``codes`` int64
  (batch, h, w, D), the codes of ``RQVAEModel.encode(images).codes``;
- ``decoder.onnx``: input ``codes`` int64 (batch, h, w, D); output ``images`` float32 (batch, C, H, W) in
  about [-1, 1], as ``RQVAEModel.decode_codes(codes).sample``;
- ``config.json`` (the RQ-VAE's) and a ``README.md`` naming the inputs and outputs.

The batch size is dynamic; H and W are those of the export (``--height`` / ``--width``, by default the
model's ``sample_size``). Weights are stored inside the ``.onnx`` files, or beside them as ``<name>.onnx.data``
for models over 1 GiB. Then ``onnxruntime`` runs the check: the codes and images of both runtimes on
``--num_check_images`` seeded random images are compared and printed. The export goes through
``torch.onnx.export`` (dynamo exporter; needs ``pip install -e ".[onnx]"``). Optimum's exporter does not fit:
``optimum-onnx`` requires transformers < 4.58.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models.autoencoder_rqvae import RQVAEModel
from .models.hub_utils import atomic_save_directory

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
EXTERNAL_DATA_BYTES = 1 << 30  # weights beyond this go to a .onnx.data file beside the graph

_README = """# RQ-VAE in ONNX

Exported with `python -m rq_hf.export_onnx` from `{source}`.

- `{encoder}`: input `images` float32 (batch, {channels}, {height}, {width}) in [-1, 1];
  output `codes` int64 (batch, {h}, {w}, {depth}).
- `{decoder}`: input `codes` int64 (batch, {h}, {w}, {depth}) in [0, {codebook_size});
  output `images` float32 (batch, {out_channels}, {height}, {width}).

```python
import numpy as np, onnxruntime as ort
encoder = ort.InferenceSession("{encoder}")
decoder = ort.InferenceSession("{decoder}")
codes = encoder.run(None, {{"images": images}})[0]          # images: float32 in [-1, 1]
reconstruction = decoder.run(None, {{"codes": codes}})[0]
```
"""


class RQVAEEncoderGraph(nn.Module):
    """`RQVAEModel.encode(images).codes` as one traceable graph: images (B, C, H, W) -> codes long (B, h, w, D).

    Each depth takes the argmin of the quantizer's distances `||e_k||^2 - 2 r.e_k` (first index on ties, as
    the quantizer), without its row chunking, whose loop length would depend on the batch size.
    """

    def __init__(self, vae: RQVAEModel):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.vae._latents(images).permute(0, 2, 3, 1)
        quantizer = self.vae.quantizer
        residual = latents.reshape(-1, quantizer.dim).float()
        codes = []
        for depth in range(quantizer.code_depth):
            codebook = quantizer.codebook(depth).float()
            distances = torch.addmm(codebook.pow(2).sum(1), residual, codebook.t(), alpha=-2.0)
            codes.append(distances.argmin(dim=1))
            residual = residual - F.embedding(codes[-1], codebook)
        return torch.stack(codes, dim=-1).reshape(*latents.shape[:-1], quantizer.code_depth)


class RQVAEDecoderGraph(nn.Module):
    """`RQVAEModel.decode_codes(codes).sample` as one traceable graph: codes long (B, h, w, D) -> images."""

    def __init__(self, vae: RQVAEModel):
        super().__init__()
        self.vae = vae

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        quantized = self.vae.quantizer._sum_code_vectors(codes)
        return self.vae._decode_quantized(quantized.permute(0, 3, 1, 2))


def load_rqvae(model_path: str, subfolder: str | None = None) -> RQVAEModel:
    """An `RQVAEModel` in fp32 from its folder, a pipeline folder (its `vqvae/`) or a Hub id (with `subfolder`)."""
    if subfolder is None and os.path.isfile(os.path.join(model_path, "model_index.json")):
        subfolder = "vqvae"
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return RQVAEModel.from_pretrained(model_path, dtype=torch.float32, **kwargs).eval()


def _image_size(vae: RQVAEModel, height: int | None, width: int | None) -> tuple[int, int]:
    size = vae.config.sample_size
    default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
    height, width = height or default_h, width or default_w
    vae.code_shape_for(height, width)  # checks: positive multiples of the down-sampling factor
    return height, width


def export_rqvae_to_onnx(
    vae: RQVAEModel,
    output_dir: str | os.PathLike,
    height: int | None = None,
    width: int | None = None,
    opset_version: int | None = None,
    source: str = "an RQVAEModel",
) -> dict[str, str]:
    """Write `encoder.onnx`, `decoder.onnx`, `config.json` and `README.md` into `output_dir` (atomically).

    Args:
        vae: the RQ-VAE (exported in fp32, on the CPU; the model itself is left as it was).
        output_dir: folder to write; files of an earlier export there are replaced only once all are written.
        height, width: image size of the graphs (default: `vae.config.sample_size`); the batch is dynamic.
        opset_version: ONNX opset (default: the exporter's).
        source: where the model came from, for the README.

    Returns:
        `{"encoder": path, "decoder": path}`.
    """
    if not isinstance(vae, RQVAEModel):
        raise TypeError(f"`vae` must be an RQVAEModel, got {type(vae).__name__}.")
    height, width = _image_size(vae, height, width)
    h, w, depth = vae.code_shape_for(height, width)
    export_vae = RQVAEModel.from_config(vae.config).eval()  # a fp32 CPU copy: `vae` keeps its device/dtype
    export_vae.load_state_dict({k: (v.float() if v.is_floating_point() else v).detach().cpu()
                                for k, v in vae.state_dict().items()})
    weight_bytes = sum(t.numel() * 4 for t in export_vae.state_dict().values())
    batch = torch.export.Dim("batch")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, vae.config.in_channels, height, width, generator=generator) * 2 - 1
    codes = torch.randint(0, vae.config.codebook_size, (2, h, w, depth), generator=generator)
    graphs = {
        "encoder": (RQVAEEncoderGraph(export_vae).eval(), images, "images", "codes", ENCODER_FILE),
        "decoder": (RQVAEDecoderGraph(export_vae).eval(), codes, "codes", "images", DECODER_FILE),
    }
    with atomic_save_directory(output_dir) as staging:
        for module, example, input_name, output_name, file_name in graphs.values():
            torch.onnx.export(
                module,
                (example,),
                os.path.join(staging, file_name),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                opset_version=opset_version,
                external_data=weight_bytes > EXTERNAL_DATA_BYTES,
                dynamo=True,
                verbose=False,
            )
        export_vae.save_config(staging)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(_README.format(source=source, encoder=ENCODER_FILE, decoder=DECODER_FILE, height=height,
                                   width=width, h=h, w=w, depth=depth, channels=vae.config.in_channels,
                                   out_channels=vae.config.out_channels, codebook_size=vae.config.codebook_size))
    return {name: os.path.join(os.fspath(output_dir), graph[-1]) for name, graph in graphs.items()}


def folder_size_bytes(output_dir: str | os.PathLike, file_name: str) -> int:
    """Bytes of an exported graph with its external data file, if any."""
    paths = [os.path.join(output_dir, file_name), os.path.join(output_dir, file_name + ".data")]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


@torch.no_grad()
def check_onnx_export(vae: RQVAEModel, output_dir: str | os.PathLike, images: torch.Tensor) -> dict[str, Any]:
    """Run both graphs in onnxruntime (CPU) on `images` (B, C, H, W) in [-1, 1] and compare with `vae` (fp32).

    Returns:
        `batch_size`; `codes_agreement` and `differing_codes` (encoder graph against `vae.encode`: fraction
        of equal codes, number of differing ones) and `images_with_differing_codes`; `max_abs_image_diff`
        (decoder graph against `vae.decode_codes`, both fed PyTorch's codes); `max_abs_end_to_end_diff`
        (both graphs in a row against `vae.encode` then `vae.decode_codes`).
    """
    import onnxruntime

    options = {"providers": ["CPUExecutionProvider"]}
    encoder = onnxruntime.InferenceSession(os.path.join(output_dir, ENCODER_FILE), **options)
    decoder = onnxruntime.InferenceSession(os.path.join(output_dir, DECODER_FILE), **options)
    device = next(vae.parameters()).device
    codes = vae.encode(images.to(device)).codes.cpu()
    reference = vae.decode_codes(codes.to(device)).sample.float().cpu()
    onnx_codes = torch.from_numpy(encoder.run(None, {"images": images.float().cpu().numpy()})[0])
    onnx_images = torch.from_numpy(decoder.run(None, {"codes": codes.numpy()})[0])
    if onnx_codes.shape != codes.shape or onnx_images.shape != reference.shape:
        raise RuntimeError(
            f"ONNX outputs have shapes {tuple(onnx_codes.shape)} / {tuple(onnx_images.shape)}, PyTorch's "
            f"{tuple(codes.shape)} / {tuple(reference.shape)}."
        )
    differing = onnx_codes != codes
    end_to_end = onnx_images
    if differing.any():
        end_to_end = torch.from_numpy(decoder.run(None, {"codes": onnx_codes.numpy()})[0])
    return {
        "batch_size": images.shape[0],
        "codes_agreement": 1.0 - differing.float().mean().item(),
        "differing_codes": int(differing.sum()),
        "images_with_differing_codes": int(differing.flatten(1).any(1).sum()),
        "max_abs_image_diff": (onnx_images - reference).abs().max().item(),
        "max_abs_end_to_end_diff": (end_to_end - reference).abs().max().item(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rq_hf.export_onnx",
        description="Export an RQ-VAE to ONNX: encoder.onnx (images -> codes) and decoder.onnx (codes -> images).",
    )
    parser.add_argument("--model_path", required=True,
                        help="RQVAEModel folder, pipeline folder (its vqvae/ is used) or Hub id")
    parser.add_argument("--output_dir", required=True, help="folder to write the ONNX files into")
    parser.add_argument("--subfolder", default=None, help="subfolder of the RQ-VAE (e.g. vqvae of a Hub pipeline)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: config sample_size)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: config sample_size)")
    parser.add_argument("--opset_version", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--num_check_images", type=int, default=8,
                        help="seeded random images to compare onnxruntime with PyTorch on (0: no check)")
    return parser


def main(argv=None) -> dict[str, Any]:
    """Command-line entry point (see the module docstring); returns the sizes and the check's figures."""
    args = build_parser().parse_args(argv)
    if args.num_check_images < 0:
        raise SystemExit(f"--num_check_images must be >= 0, got {args.num_check_images}.")
    vae = load_rqvae(args.model_path, args.subfolder)
    paths = export_rqvae_to_onnx(vae, args.output_dir, args.height, args.width, args.opset_version,
                                 source=args.model_path)
    report: dict[str, Any] = {
        f"{name}_bytes": folder_size_bytes(args.output_dir, os.path.basename(path)) for name, path in paths.items()
    }
    report["pytorch_weight_bytes"] = sum(t.numel() * t.element_size() for t in vae.state_dict().values())
    if args.num_check_images:
        height, width = _image_size(vae, args.height, args.width)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.num_check_images, vae.config.in_channels, height, width, generator=generator)
        report.update(check_onnx_export(vae, args.output_dir, images * 2 - 1))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
