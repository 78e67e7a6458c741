"""Helpers shared by the tests of the training scripts."""

import json
import os


def flags_to_argv(flags: dict) -> list[str]:
    """``{"--flag": "value", "--switch": True, "--dropped": None}`` -> an argv list, in insertion order."""
    argv = []
    for key, value in flags.items():
        if value is None:
            continue
        argv += [key] if value is True else [key, value]
    return argv


def read_metrics(output_dir) -> list[dict]:
    """The per-step records a training script writes to ``output_dir/logs/metrics.jsonl``."""
    with open(os.path.join(output_dir, "logs", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
