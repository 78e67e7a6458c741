"""How an ONNX export of an RQ-VAE agrees with PyTorch on the whole Fashion-MNIST test split (onnxruntime, CPU).

    python -m rq_hf.export_onnx --model_path quickstart/rqvae --output_dir quickstart/onnx
    python benchmarks/onnx_agreement.py --model_path quickstart/rqvae --onnx_dir quickstart/onnx

Runs ``rq_hf.export_onnx.check_onnx_export`` batch by batch on the test images (padded to the model's size)
and prints, as JSON: the number of codes and of differing codes, the images with a differing code, the largest
absolute image difference of the decoder graph (same codes) and of both graphs in a row, and, for each
differing position, the relative gap between the distances of the two runtimes' codes at the first depth where
they part: a gap near float32 rounding means a near-tie that the two runtimes' sums round differently.
"""

import argparse
import json

import torch


def tie_gaps(vae, latents: torch.Tensor, codes: torch.Tensor, other_codes: torch.Tensor) -> list[float]:
    """|d(other) - d(code)| / d(code) of squared distances at the first differing depth of each differing position.

    `latents` (B, n_z, h, w); `codes`, `other_codes` (B, h, w, D).
    """
    differing = (codes != other_codes).any(-1)
    gaps = []
    for residual, mine, theirs in zip(latents.permute(0, 2, 3, 1)[differing], codes[differing], other_codes[differing]):
        for depth in range(codes.shape[-1]):
            codebook = vae.quantizer.codebook(depth).float()
            distances = (residual[None] - codebook).pow(2).sum(1)
            if mine[depth] != theirs[depth]:
                gaps.append(((distances[theirs[depth]] - distances[mine[depth]]).abs() / distances[mine[depth]]).item())
                break
            residual = residual - codebook[mine[depth]]
    return gaps


@torch.no_grad()
def measure(vae, onnx_dir: str, images: torch.Tensor, batch_size: int = 500) -> dict:
    """Sum `check_onnx_export` over batches of `images`; the near-tie gaps of every differing position."""
    import os

    import onnxruntime

    from rq_hf.export_onnx import ENCODER_FILE, check_onnx_export

    encoder = onnxruntime.InferenceSession(os.path.join(onnx_dir, ENCODER_FILE), providers=["CPUExecutionProvider"])
    totals = {"images": 0, "codes": 0, "differing_codes": 0, "images_with_differing_codes": 0,
              "max_abs_image_diff": 0.0, "max_abs_end_to_end_diff": 0.0, "tie_gaps": []}
    for batch in images.split(batch_size):
        result = check_onnx_export(vae, onnx_dir, batch)
        encoded = vae.encode(batch)
        totals["images"] += len(batch)
        totals["codes"] += encoded.codes.numel()
        for key in ("differing_codes", "images_with_differing_codes"):
            totals[key] += result[key]
        for key in ("max_abs_image_diff", "max_abs_end_to_end_diff"):
            totals[key] = max(totals[key], result[key])
        if result["differing_codes"]:
            onnx_codes = torch.from_numpy(encoder.run(None, {"images": batch.numpy()})[0])
            totals["tie_gaps"] += tie_gaps(vae, encoded.latents, encoded.codes, onnx_codes)
    totals["codes_agreement"] = 1.0 - totals["differing_codes"] / totals["codes"]
    totals["max_tie_gap"] = max(totals["tie_gaps"], default=None)
    return totals


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_path", required=True, help="RQ-VAE or pipeline folder")
    parser.add_argument("--onnx_dir", required=True, help="folder written by python -m rq_hf.export_onnx")
    parser.add_argument("--max_images", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args(argv)
    from rq_hf.data import load_fashion_mnist
    from rq_hf.evaluation import load_image_tensors
    from rq_hf.export_onnx import load_rqvae

    vae = load_rqvae(args.model_path)
    size = vae.config.sample_size
    images = load_image_tensors(load_fashion_mnist("test"), size if isinstance(size, int) else size[0],
                                num_channels=vae.config.in_channels, pad_to_resolution=True,
                                max_samples=args.max_images).images
    result = measure(vae, args.onnx_dir, images, args.batch_size)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
