"""Faults injected into a training script from outside (the scripts have no test flags).

In process (a test calling `main(argv)`): `inject(monkeypatch.setattr, nan_at_step=5)`. In a subprocess, as a
wrapper that runs the script as `__main__` (also under `torchrun`):

    python tests/inject_faults.py [--nan_at_step N] [--sigkill_after_step N] [--dump_state_to DIR] SCRIPT ARGS...

- `nan_at_step`: the loss values of optimisation step N become NaN where the script checks them
  (`guard_finite`), so the run stops there as after a real NaN;
- `sigkill_after_step`: the process kills itself with SIGKILL once step N is done, its checkpoint included;
- `dump_state_to`: at `accelerator.end_training()` every process saves the state dict (weights and buffers) of
  its first prepared model (of its base model, with the LoRA layers, for a peft model) to
  `DIR/rank<r>.safetensors`.
"""

import argparse
import os
import runpy
import signal
import sys
from typing import Callable


def inject(setattr_: Callable, nan_at_step=None, sigkill_after_step=None, dump_state_to=None) -> None:
    """Patch the training machinery with `setattr_(owner, name, value)` (e.g. `monkeypatch.setattr`)."""
    from rq_hf.training import script_utils

    if nan_at_step is not None:
        guard_finite = script_utils.guard_finite

        def poisoned_guard(values, step, output_dir):
            if step == nan_at_step:
                values = {**{k: float("nan") for k in values if "loss" in k}, "nonfinite": 1.0}
            guard_finite(values, step, output_dir)

        setattr_(script_utils, "guard_finite", poisoned_guard)
    if sigkill_after_step is not None:
        maybe_save_checkpoint = script_utils.maybe_save_checkpoint

        def checkpoint_then_die(accelerator, args, global_step):
            path = maybe_save_checkpoint(accelerator, args, global_step)
            if global_step == sigkill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        setattr_(script_utils, "maybe_save_checkpoint", checkpoint_then_die)
    if dump_state_to is not None:
        from accelerate import Accelerator
        from safetensors.torch import save_file

        end_training = Accelerator.end_training

        def dump_then_end(self):
            model = self.unwrap_model(self._models[0])
            if hasattr(model, "get_base_model"):  # a peft model: the transformer with its LoRA layers
                model = model.get_base_model()
            os.makedirs(dump_state_to, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, os.path.join(dump_state_to, f"rank{self.process_index}.safetensors"))
            end_training(self)

        setattr_(Accelerator, "end_training", dump_then_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nan_at_step", type=int, default=None)
    parser.add_argument("--sigkill_after_step", type=int, default=None)
    parser.add_argument("--dump_state_to", default=None)
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    inject(setattr, args.nan_at_step, args.sigkill_after_step, args.dump_state_to)
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
