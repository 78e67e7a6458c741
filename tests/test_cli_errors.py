"""Command-line errors: a bad flag or input is an argparse usage line and one message (exit 2), not a traceback;
the converter reads only stage 2's EMA weights with --use_ema and tells a corrupt file from an unsafe one."""

import os
import subprocess
import sys

import pytest
import torch
from official_fixtures import (
    official_rq_transformer_config,
    official_rq_transformer_state_dict,
    official_rqvae_config,
    official_rqvae_state_dict,
    write_stage,
)
from script_helpers import load_example
from tiny_models import tiny_transformer, tiny_vae

from rq_hf import RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel
from rq_hf.conversion import convert_original
from rq_hf.training.script_utils import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=240)


def assert_usage_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "usage:" in proc.stderr and "error:" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_scripts_report_bad_input_as_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_usage_error(run([os.path.join(REPO, "examples", "train_rqvae.py"), "--train_data_dir",
                            str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o"), "--report_to", "none"]),
                       "contains no image files")
    assert_usage_error(run([os.path.join(REPO, "examples", "generate.py"), "--model_path", str(tmp_path / "nope")]),
                       "no such folder")
    assert_usage_error(run(["-m", "rq_hf.conversion.convert_original", "--checkpoint_dir", str(tmp_path / "nope"),
                            "--output_dir", str(tmp_path / "out")]), "stage1/model.pt")


def usage_error(capsys, module, argv):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.build_parser, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    return err


@pytest.mark.parametrize("script, argv, message", [
    ("train_rq_transformer", ["--vqvae_model_name_or_path", "v", "--dataset_name", "d", "--guidance_scale", "0.5"],
     "`--guidance_scale` must be >= 1"),
    ("extract_codes", ["--vqvae_model_name_or_path", "v", "--dataset_name", "d", "--output_dir", "o",
                       "--batch_size", "0"], "`--batch_size` must be >= 1"),
    ("evaluate", ["--model_path", "{tmp}", "--dataset_name", "d"], "neither model_index.json"),
])
def test_flag_errors_of_each_script(capsys, tmp_path, script, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert message in usage_error(capsys, load_example(script), argv)


def test_generate_class_label_errors(tmp_path, capsys):
    RQTransformerPipeline(vqvae=tiny_vae(), transformer=tiny_transformer(), id2label={0: "cat", 1: "dog", 2: "owl"}) \
        .save_pretrained(tmp_path / "pipe")
    generate = load_example("generate")
    common = ["--model_path", str(tmp_path / "pipe"), "--output_dir", str(tmp_path / "out")]
    assert "[-1]" in usage_error(capsys, generate, common + ["--class_labels", "-1"])
    assert "--num_per_class" in usage_error(capsys, generate, common + ["--class_labels", "1", "--num_per_class", "0"])
    assert "known classes" in usage_error(capsys, generate, common)
    assert not (tmp_path / "out").exists()


def write_release(root, stage1_ema=False):
    cfg1 = official_rqvae_config()
    sd1 = official_rqvae_state_dict(cfg1, torch.Generator().manual_seed(0))
    extra1 = {"state_dict_ema": official_rqvae_state_dict(cfg1, torch.Generator().manual_seed(5))} if stage1_ema else {}
    write_stage(os.path.join(root, "stage1"), cfg1, sd1, **extra1)
    cfg2 = official_rq_transformer_config(cfg1, kind="uncond")
    sd2 = official_rq_transformer_state_dict(cfg2, torch.Generator().manual_seed(1))
    ema2 = official_rq_transformer_state_dict(cfg2, torch.Generator().manual_seed(2))
    write_stage(os.path.join(root, "stage2"), cfg2, sd2, state_dict_ema=ema2)
    return sd1, sd2, ema2


def test_use_ema_reads_stage_2_ema_weights_and_the_plain_rqvae(tmp_path):
    sd1, sd2, ema2 = write_release(str(tmp_path / "rel"))  # like the releases: no EMA in stage 1
    convert_original.main(["--checkpoint_dir", str(tmp_path / "rel"), "--output_dir", str(tmp_path / "out"),
                           "--use_ema"])
    transformer = RQTransformerForCausalImageModeling.from_pretrained(tmp_path / "out" / "transformer")
    assert torch.equal(transformer.output_proj.weight, ema2["classifier.linear.weight"])
    assert not torch.equal(transformer.output_proj.weight, sd2["classifier.linear.weight"])
    vae = RQVAEModel.from_pretrained(tmp_path / "out" / "vqvae")
    assert torch.equal(vae.quant_conv.weight, sd1["quant_conv.weight"])
    with pytest.raises(ValueError, match="--use_ema.*stage 2"):
        convert_original.main(["--checkpoint_dir", str(tmp_path / "rel"), "--output_dir", str(tmp_path / "o2"),
                               "--use_ema", "--stage1_only"])


@pytest.mark.parametrize("content", [b"corrupt\n", b"", b"PK\x03\x04 truncated zip"])
def test_corrupt_checkpoint_is_named_as_such_without_allow_pickle_advice(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid PyTorch checkpoint") as info:
        convert_original.load_official_checkpoint(str(path))
    assert "allow_pickle" not in str(info.value)
