#!/usr/bin/env python
"""Train (or fine-tune) an RQ-VAE on an image dataset with accelerate: stage 1 of RQ-Transformer.

Runs as ``python examples/train_rqvae.py ...``, ``accelerate launch examples/train_rqvae.py ...`` on one or
many processes, or ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/train_rqvae.py ...`` for
two real CPU processes. Example (the Fashion-MNIST quickstart model, offline)::

    python examples/train_rqvae.py --dataset_name fashion_mnist --output_dir rqvae-fmnist \\
        --train_batch_size 64 --max_train_steps 1200 --learning_rate 1e-3 --mixed_precision bf16

Loss (DESIGN.md): ``reconstruction (--reconstruction_loss mse|l1) + commitment (in the model)
+ --perceptual_weight * LPIPS (optional, needs --lpips_weights) + adaptive_weight * --disc_weight * hinge
generator loss`` (VQGAN's adaptive weight, from step ``--disc_start``); the PatchGAN discriminator is trained
with the hinge loss on raw logits and its own optimizer (``--disc_learning_rate``). The codebooks are EMA
buffers updated in the forward pass (all-reduced across processes), always in fp32.

Without ``--model_config_name_or_path`` a tiny model for 32x32 grayscale images is built (channels
16/32/64, 8x8x4 codes, 256 codes): the Fashion-MNIST quickstart. Otherwise give a config JSON file or a
folder with ``config.json`` (a new model), or a trained model folder / Hub id (fine-tuning).

``--dataset_name fashion_mnist`` reads the original Fashion-MNIST files shipped by the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; the Hub dataset elsewhere) and pads the
28x28 images to 32x32.

Outputs in ``--output_dir``: the final model (``save_pretrained`` + README.md model card),
``checkpoint-<step>/`` folders (full training state), ``validation/step_<step>.png`` grids (originals on
top, reconstructions below) and ``logs/metrics.jsonl`` (every logged value, whatever ``--report_to`` says).

Undecodable images are counted and skipped with a warning (``--on_decode_error raise`` stops instead).
A non-finite loss stops the run before the optimizer step, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os

# Only light imports at module level: `--help` must be fast. Heavy libraries are imported in main().
from rq_hf.training.script_utils import (
    add_bookkeeping_args,
    add_data_args,
    add_optimization_args,
    check_common_args,
    run_cli,
)

logger = logging.getLogger("train_rqvae")

#: The default model: 32x32 grayscale images -> 8x8x4 codes from a 256-code shared codebook (~0.4M params).
TINY_CONFIG = {
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 32,
    "norm_num_groups": 8,
    "sample_size": 32,
    "vq_embed_dim": 32,
    "mid_block_add_attention": True,
    "codebook_size": 256,
    "code_depth": 4,
    "shared_codebook": True,
    "ema_decay": 0.99,
    "restart_unused_codes": True,
    "commitment_weight": 0.25,
    "restart_threshold": 1.0,
}


def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser (shared groups from ``rq_hf.training.script_utils`` + RQ-VAE flags)."""
    parser = argparse.ArgumentParser(
        description="Train an RQ-VAE (stage 1 of RQ-Transformer) with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_config_name_or_path", type=str, default=None,
        help="A config JSON file or a folder with config.json (new model), or a trained model folder / Hub "
        "id (fine-tuning). Default: a tiny model for 32x32 grayscale images (8x8x4 codes, 256 codes).",
    )
    add_data_args(parser)
    add_optimization_args(parser, learning_rate=1e-4, adam_beta1=0.5, adam_beta2=0.9, max_grad_norm=1.0)
    loss = parser.add_argument_group("loss")
    loss.add_argument("--reconstruction_loss", choices=("mse", "l1"), default="mse")
    loss.add_argument(
        "--perceptual_weight", type=float, default=0.0,
        help="Weight of the LPIPS perceptual loss (1.0 in RQ-VAE); needs --lpips_weights. 0: off.",
    )
    loss.add_argument(
        "--lpips_weights", type=str, nargs="+", default=None,
        help="Local LPIPS weights file(s): VGG16 features + lpips linear layers (rq_hf.training.perceptual).",
    )
    loss.add_argument("--disc_weight", type=float, default=0.75, help="Adversarial weight (0: no GAN).")
    loss.add_argument("--disc_start", type=int, default=0, help="Step at which the GAN terms start.")
    loss.add_argument(
        "--disc_learning_rate", "--discr_learning_rate", dest="disc_learning_rate", type=float, default=1e-4,
        help="Discriminator learning rate (`--discr_learning_rate`: diffusers' train_vqgan.py name).",
    )
    loss.add_argument("--disc_base_channels", type=int, default=64, help="PatchGAN channels (ndf).")
    loss.add_argument(
        "--disc_num_layers", type=int, default=3,
        help="PatchGAN stride-2 layers; images must be at least 3 * 2**N pixels.",
    )
    add_bookkeeping_args(parser, output_dir="rqvae-model")
    parser.add_argument(
        "--num_validation_images", type=int, default=8,
        help="Images (the first rows of the dataset) in the validation grid and PSNR.",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the flags; ``ValueError`` names the bad flag."""
    args = build_parser().parse_args(argv)
    check_common_args(args)
    if args.perceptual_weight < 0 or args.disc_weight < 0:
        raise ValueError(
            f"`--perceptual_weight` and `--disc_weight` must be >= 0, got {args.perceptual_weight} and "
            f"{args.disc_weight}"
        )
    if args.perceptual_weight > 0 and not args.lpips_weights:
        raise ValueError(
            f"`--perceptual_weight` {args.perceptual_weight} needs `--lpips_weights PATH`: LPIPS uses "
            "pretrained VGG16 + linear-layer weights that cannot be downloaded here "
            "(rq_hf.training.perceptual explains how to build the file); give it or use --perceptual_weight 0"
        )
    if args.disc_start < 0:
        raise ValueError(f"`--disc_start` must be >= 0, got {args.disc_start}")
    if args.num_validation_images < 1:
        raise ValueError(f"`--num_validation_images` must be >= 1, got {args.num_validation_images}")
    return args


def load_model(path: str | None):
    """A new model from ``TINY_CONFIG`` / a config file or folder, or a trained model to fine-tune."""
    from rq_hf.models.autoencoder_rqvae import RQVAEModel

    if path is None:
        return RQVAEModel.from_config(TINY_CONFIG)
    has_weights = os.path.isdir(path) and any(
        name.startswith("diffusion_pytorch_model") for name in os.listdir(path)
    )
    if os.path.isfile(path) or (os.path.isdir(path) and not has_weights):
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"`--model_config_name_or_path` {path!r} is a folder without config.json or model weights"
            )
        return RQVAEModel.from_config(RQVAEModel.load_config(path))
    model = RQVAEModel.from_pretrained(path)  # a folder with weights, or a Hub id
    model.train()
    return model


def validate(model, images, output_dir: str, step: int) -> float:
    """Reconstruct the validation images, save ``validation/step_<step>.png``, return the PSNR."""
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils import make_image_grid

    from rq_hf.evaluation import psnr

    was_training = model.training
    model.eval()
    with torch.no_grad():
        reconstructions = model(images, return_dict=False)[0]  # a tuple: see the training step
    model.train(was_training)
    images, reconstructions = images.float(), reconstructions.float().clamp(-1, 1)
    to_pil = VaeImageProcessor().postprocess
    grid = make_image_grid(to_pil(images) + to_pil(reconstructions), rows=2, cols=len(images))
    folder = os.path.join(output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    grid.save(os.path.join(folder, f"step_{step:06d}.png"))
    return float(psnr(images, reconstructions, data_range=2.0))


def main(argv: list[str] | None = None) -> None:
    """Train; see the module docstring."""
    args = parse_args(argv)

    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from rq_hf.data import ImageTransform, collate_images, with_image_transform
    from rq_hf.training.adversarial import (
        adaptive_weight,
        adopt_weight,
        generator_adversarial_loss,
        hinge_d_loss,
    )
    from rq_hf.training.discriminator import PatchGANDiscriminator
    from rq_hf.training.script_utils import (
        MetricsLog,
        compute_schedule,
        count_skipped_images,
        guard_finite,
        init_trackers,
        iterate_epochs,
        load_train_dataset,
        make_accelerator,
        make_lr_scheduler,
        make_train_dataloader,
        maybe_save_checkpoint,
        reduce_step_values,
        resume_training,
        save_and_push,
    )
    from rq_hf.training.sharding import require_unsharded

    accelerator = make_accelerator(args)
    require_unsharded(  # rq_hf.training.sharding: FSDP / DeepSpeed are for the stage-2 transformer
        accelerator, "train_rqvae.py", "the GAN's adaptive weight differentiates through the decoder's last layer, "
        "which a sharded model does not hold whole, and an RQ-VAE fits in data-parallel memory"
    )
    logger.info("%s", accelerator.state)

    # ------------------------------------------------------------------ model, losses
    vae = load_model(args.model_config_name_or_path)
    vae.train()
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    channels = vae.config.in_channels
    factor = vae.downsample_factor
    if args.resolution % factor:
        raise ValueError(
            f"`--resolution` must be a multiple of the model's down-sampling factor {factor}, "
            f"got {args.resolution}"
        )
    use_disc = args.disc_weight > 0
    discriminator = None
    if use_disc:
        min_size = 3 * 2**args.disc_num_layers
        if args.resolution < min_size:
            raise ValueError(
                f"`--disc_num_layers` {args.disc_num_layers} needs images of at least {min_size} pixels, got "
                f"--resolution {args.resolution}; lower --disc_num_layers or use --disc_weight 0"
            )
        discriminator = PatchGANDiscriminator(
            in_channels=channels, base_channels=args.disc_base_channels, n_layers=args.disc_num_layers
        )
    lpips = None
    if args.perceptual_weight > 0:
        from rq_hf.training.perceptual import LPIPS

        lpips = LPIPS.from_pretrained(args.lpips_weights).to(accelerator.device)

    # ------------------------------------------------------------------ data
    dataset = load_train_dataset(args)
    transform = ImageTransform(args.resolution, center_crop=args.center_crop, random_flip=args.random_flip,
                               num_channels=channels, pad_to_resolution=args.pad_to_resolution)
    val_transform = ImageTransform(args.resolution, center_crop=True, num_channels=channels,
                                   pad_to_resolution=args.pad_to_resolution)
    val_rows = dataset.select(range(min(args.num_validation_images, len(dataset))))
    val_rows = with_image_transform(val_rows, val_transform, args.image_column)
    validation_images = collate_images([val_rows[i] for i in range(len(val_rows))])["pixel_values"]
    train_dataset = with_image_transform(dataset, transform, args.image_column,
                                         on_decode_error=args.on_decode_error, seed=args.seed)
    train_dataloader = accelerator.prepare(make_train_dataloader(train_dataset, args, collate_images))
    schedule = compute_schedule(len(train_dataloader), args)

    # ------------------------------------------------------------------ optimisation
    if args.scale_lr:
        scale = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        args.learning_rate *= scale
        args.disc_learning_rate *= scale
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=betas,
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    lr_scheduler = make_lr_scheduler(optimizer, args, schedule, accelerator.num_processes)
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    if use_disc:
        discr_optimizer = torch.optim.AdamW(
            discriminator.parameters(), lr=args.disc_learning_rate, betas=betas,
            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        )
        discr_lr_scheduler = make_lr_scheduler(discr_optimizer, args, schedule, accelerator.num_processes)
        discriminator, discr_optimizer, discr_lr_scheduler = accelerator.prepare(
            discriminator, discr_optimizer, discr_lr_scheduler
        )
    unwrapped_vae = accelerator.unwrap_model(vae)
    unwrapped_disc = accelerator.unwrap_model(discriminator) if use_disc else None
    last_layer = unwrapped_vae.decoder.conv_out.weight
    trained_models = [vae, discriminator] if use_disc else [vae]

    progress = resume_training(accelerator, args)  # step 0, or where --resume_from_checkpoint left off

    init_trackers(accelerator, args, "train_rqvae")
    metrics = MetricsLog(accelerator, args.output_dir, args.logging_dir)
    num_params = sum(p.numel() for p in unwrapped_vae.parameters())
    logger.info(
        "***** Training: %d images, %d processes x batch %d x accumulation %d, %d steps (%d epochs), "
        "%.2fM parameters *****", len(train_dataset), accelerator.num_processes, args.train_batch_size,
        args.gradient_accumulation_steps, schedule.max_train_steps, schedule.num_train_epochs,
        num_params / 1e6,
    )
    progress_bar = tqdm(total=schedule.max_train_steps, initial=progress.global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    rec_fn = F.mse_loss if args.reconstruction_loss == "mse" else F.l1_loss
    device = accelerator.device

    def set_disc_grad(flag: bool) -> None:
        for p in unwrapped_disc.parameters():
            p.requires_grad_(flag)

    # ------------------------------------------------------------------ loop
    if progress.global_step < schedule.max_train_steps:
        for _, batch in iterate_epochs(train_dataloader, progress, schedule):
            if count_skipped_images(accelerator, batch, progress):  # every process skips this batch together
                continue
            pixel_values = batch["pixel_values"]
            step = progress.global_step + 1
            with accelerator.accumulate(*trained_models):
                # The WRAPPED model (DDP needs it); this also updates the EMA codebooks. A tuple, because
                # accelerate's mixed-precision output conversion rebuilds mappings with one positional
                # argument, which BaseOutput classes with several required fields do not accept.
                outputs = vae(pixel_values, return_dict=False)
                reconstructions, _, commitment_loss, codebook_usage, perplexity = outputs
                rec_loss = rec_fn(reconstructions.float(), pixel_values.float())
                nll_loss = rec_loss
                values = {"rec_loss": rec_loss.detach(), "commitment_loss": commitment_loss.detach()}
                if lpips is not None:
                    perceptual_loss = lpips(pixel_values.float(), reconstructions.float()).mean()
                    nll_loss = nll_loss + args.perceptual_weight * perceptual_loss
                    values["perceptual_loss"] = perceptual_loss.detach()
                loss = nll_loss + commitment_loss
                disc_factor = adopt_weight(1.0, progress.global_step, threshold=args.disc_start)
                gan_active = use_disc and disc_factor > 0
                if gan_active:
                    set_disc_grad(False)  # the generator's adversarial term must not touch the discriminator
                    g_loss = generator_adversarial_loss(unwrapped_disc(reconstructions.float()))
                    set_disc_grad(True)
                    d_weight = adaptive_weight(nll_loss, g_loss, last_layer) * args.disc_weight
                    loss = loss + d_weight * disc_factor * g_loss
                    logits = discriminator(torch.cat([pixel_values, reconstructions.detach()]).float())
                    logits_real, logits_fake = logits.chunk(2)
                    d_loss = disc_factor * hinge_d_loss(logits_real, logits_fake)
                    values.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), adaptive_weight=d_weight,
                                  logits_real=logits_real.detach().mean(),
                                  logits_fake=logits_fake.detach().mean())
                values["loss"] = loss.detach()
                for d in range(codebook_usage.shape[0]):
                    values[f"codebook_usage/depth{d}"] = codebook_usage[d]
                    values[f"perplexity/depth{d}"] = perplexity[d]
                reduced = reduce_step_values(accelerator, values)
                guard_finite(reduced, step, args.output_dir)  # before any update: nothing bad gets saved

                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(vae.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if gan_active:
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                    discr_optimizer.step()
                    discr_lr_scheduler.step()
                if use_disc:
                    discr_optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            progress_bar.update(1)
            reduced.pop("nonfinite")
            reduced["lr"] = lr_scheduler.get_last_lr()[0]
            if use_disc:
                reduced["lr_discriminator"] = discr_lr_scheduler.get_last_lr()[0]
            reduced["disc_factor"] = float(disc_factor) if use_disc else 0.0
            reduced["num_skipped_images"] = progress.num_skipped_images
            progress_bar.set_postfix(rec=f"{reduced['rec_loss']:.4f}", loss=f"{reduced['loss']:.4f}")
            if progress.global_step % args.validation_steps == 0 and accelerator.is_main_process:
                reduced["val/psnr"] = validate(unwrapped_vae, validation_images.to(device), args.output_dir,
                                               progress.global_step)
                logger.info("step %d: validation PSNR %.2f dB", progress.global_step, reduced["val/psnr"])
            metrics.log(reduced, step=progress.global_step)
            maybe_save_checkpoint(accelerator, args, progress.global_step)
            if progress.global_step >= schedule.max_train_steps:
                break
    progress_bar.close()

    # ------------------------------------------------------------------ final model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_psnr = validate(unwrapped_vae, validation_images.to(device), args.output_dir,
                              progress.global_step)
        metrics.log({"val/psnr": final_psnr}, step=progress.global_step)
        metrics_for_card = {"validation PSNR (dB)": round(final_psnr, 2), "training steps": progress.global_step}
        h, w, depth = unwrapped_vae.code_shape_for(args.resolution, args.resolution)
        repo_id = save_and_push(
            unwrapped_vae,
            args,
            metrics=metrics_for_card,
            description=(
                f"An RQ-VAE (residual-quantized autoencoder, Lee et al. 2022) trained with rq-hf's "
                f"`examples/train_rqvae.py` for {progress.global_step} steps on "
                f"`{args.dataset_name or args.train_data_dir}` at {args.resolution}x{args.resolution}: "
                f"{h}x{w}x{depth} codes from {unwrapped_vae.config.codebook_size} codes per codebook. "
                f"Validation PSNR {final_psnr:.2f} dB. {progress.num_skipped_images} undecodable images "
                "were skipped."
            ),
        )
        logger.info("Saved the model to %s (validation PSNR %.2f dB)", args.output_dir, final_psnr)
        if repo_id is not None:
            logger.info("Pushed %s to the Hub: %s", args.output_dir, repo_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main, build_parser)  # bad flags or inputs: a usage line and the message, no traceback
