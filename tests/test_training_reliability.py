"""Training scripts: stage 2 encodes in fp32 whatever the mixed precision, fine-tuning keeps the code embeddings
frozen unless asked, and every process draws its own random numbers (data order unchanged)."""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from script_helpers import TINY_RQVAE, flags_to_argv, load_example, save_blob_dataset

from rq_hf import RQTransformerForCausalImageModeling, RQVAEModel
from rq_hf.training.script_utils import reset_accelerate_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    RQVAEModel(**TINY_RQVAE).save_pretrained(root / "vae")
    save_blob_dataset(root / "images", n=16)
    return root


def stage2_flags(data, output_dir, **overrides):
    flags = {
        "--vqvae_model_name_or_path": str(data / "vae"),
        "--dataset_name": str(data / "images"),
        "--class_label_column": "label",
        "--resolution": "16",
        "--hidden_size": "16",
        "--num_attention_heads": "2",
        "--num_spatial_layers": "1",
        "--train_batch_size": "8",
        "--max_train_steps": "2",
        "--validation_fraction": "0",
        "--num_validation_images": "1",
        "--num_validation_classes": "1",
        "--report_to": "none",
        "--output_dir": str(output_dir),
    }
    flags.update(overrides)
    return flags_to_argv(flags)


def rows(codes):
    return sorted(bytes(c.to(torch.int32).numpy().tobytes()) for c in codes)


def test_on_the_fly_codes_under_bf16_equal_extracted_codes(data, tmp_path):
    extracted = load_example("extract_codes").main(flags_to_argv({
        "--vqvae_model_name_or_path": str(data / "vae"), "--dataset_name": str(data / "images"),
        "--resolution": "16", "--device": "cpu", "--output_dir": str(tmp_path / "codes")}))
    seen = []
    forward = RQTransformerForCausalImageModeling.forward

    def recording_forward(self, codes, *args, **kwargs):
        seen.append(codes.detach().cpu().clone())
        return forward(self, codes, *args, **kwargs)

    with mock.patch.object(RQTransformerForCausalImageModeling, "forward", recording_forward):
        load_example("train_rq_transformer").main(stage2_flags(data, tmp_path / "out", **{"--mixed_precision": "bf16"}))
    trained_on = torch.cat(seen[:2])  # the two training batches: all 16 images once
    assert trained_on.shape == (16, 8, 8, 2)
    assert rows(trained_on) == rows(torch.from_numpy(np.stack(extracted.with_format("numpy")["codes"])))


def test_code_embeddings_stay_frozen_unless_asked_new_and_fine_tuned(data, tmp_path):
    train = load_example("train_rq_transformer")
    vae = train.load_vqvae(str(data / "vae"))
    classes = {0: "left", 1: "right"}

    def optimized(argv):
        args = train.parse_args(argv)
        model, _ = train.build_transformer(args, vae, [8, 8, 2], classes)
        ids = {id(p) for group in train.param_groups(model, 0.01) for p in group["params"]}
        return model, id(model.code_embeddings.weight) in ids

    new, trained = optimized(stage2_flags(data, tmp_path / "a"))
    assert not trained
    new.save_pretrained(tmp_path / "trained")
    fine_tune = {"--model_config_name_or_path": str(tmp_path / "trained"), "--hidden_size": None,
                 "--num_attention_heads": None, "--num_spatial_layers": None}
    assert optimized(stage2_flags(data, tmp_path / "b", **fine_tune))[1] is False
    assert optimized(stage2_flags(data, tmp_path / "c", **fine_tune, **{"--train_code_embeddings": True}))[1]
    assert optimized(stage2_flags(data, tmp_path / "d", **{"--train_code_embeddings": True}))[1]


RANK_SCRIPT = """
import json, os, sys, torch
from rq_hf.training.script_utils import (add_bookkeeping_args, add_data_args, add_optimization_args,
                                         make_accelerator, make_train_dataloader)
import argparse
parser = argparse.ArgumentParser()
add_data_args(parser)
add_optimization_args(parser)
add_bookkeeping_args(parser, output_dir=sys.argv[1])
args = parser.parse_args(["--seed", "7", "--train_batch_size", "2", "--report_to", "none"])
accelerator = make_accelerator(args)
loader = accelerator.prepare(make_train_dataloader(list(range(8)), args, collate_fn=lambda rows: rows))
loader.set_epoch(0)
out = {"rand": torch.rand(4).tolist(), "rows": [row for batch in loader for row in batch]}
with open(os.path.join(sys.argv[1], f"rank{accelerator.process_index}.json"), "w") as f:
    json.dump(out, f)
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_each_process_draws_its_own_random_numbers_on_the_same_data_order(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([launcher, "--nproc_per_node", "2", "--master_port", str(29700 + os.getpid() % 200),
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["rand"] != rank1["rand"]  # dropout, class dropout and stochastic codes differ per process
    assert sorted(rank0["rows"] + rank1["rows"]) == list(range(8))  # one shuffled order, split between them
