"""Fault injection: SIGKILL a save at a chosen file-system write and check that nothing is lost or mixed.

A forked child runs the save with an audit hook (``sys.addaudithook``) that counts the file-system writes
(``open`` for writing, ``os.rename``/``os.replace``, ``os.remove``, ``os.mkdir``, ``os.rmdir``,
``shutil.rmtree``) made while the save runs, and sends itself SIGKILL just before write number *k*. Nothing in
rq-hf knows about it: the hook and the monkeypatches that mark the save window live in the child only.
Writes made inside C code (the bodies of safetensors / torch.save files) fire no event; a kill before the
next event leaves them complete but unrenamed, a kill at their ``open``/``mkdir`` leaves them empty. After
each kill the parent checks:

* ``checkpoint``: training (``examples/train_rqvae.py``, 4 steps, a checkpoint every 2, at most 1 kept) is
  killed while writing its checkpoints. ``--resume_from_checkpoint latest`` must pick a checkpoint at least
  as new as the last one whose save had returned, the resumed run must end with the weights of an
  uninterrupted run, and its saves must have removed what the killed one left behind.
* ``train_save_pretrained``: a run that continues training (steps 3-4) into a folder that holds the model of
  steps 1-2 is killed during its final ``save_pretrained`` (and model card). ``from_pretrained`` must load
  exactly the old or the new model, and the checkpoints must be intact.
* ``pipeline_save_pretrained``: ``RQTransformerPipeline.save_pretrained`` over an older pipeline. Both
  components must load from the same save, and while a commit is pending a folder that has its
  ``model_index.json`` (so that any loader, without rq-hf's recovery, reads it) must hold one save's files.

A kill point loses data when any check fails; the report counts the points tried and the points that lost data.

    python benchmarks/fault_injection.py                          # every write of every scenario (minutes)
    python benchmarks/fault_injection.py --points 3 --seed 0      # 3 random points per scenario
    python benchmarks/fault_injection.py --output_json sweep.json

Linux (fork, SIGKILL). The tests run a few points (tests/test_fault_injection.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
WRITE_EVENTS = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate"}
SCENARIOS = ("checkpoint", "train_save_pretrained", "pipeline_save_pretrained")


# ============================================================================================ kill switch


class KillSwitch:
    """Audit hook: counts file-system writes while armed; SIGKILLs the process before write `kill_at`."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.count = 0
        self.depth = 0

    def hook(self, event: str, args: tuple) -> None:
        if self.depth == 0 or not self._is_write(event, args):
            return
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _is_write(event: str, args: tuple) -> bool:
        if event in WRITE_EVENTS:
            return True
        if event != "open" or len(args) < 3:
            return False
        mode, flags = args[1], args[2] or 0
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    @contextlib.contextmanager
    def armed(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def wrap(self, owner: Any, name: str) -> None:
        """Arm the switch while `owner.name` (a function or method) runs: monkeypatched, in this process only."""
        real = getattr(owner, name)
        switch = self

        def armed_call(*args, **kwargs):
            with switch.armed():
                return real(*args, **kwargs)

        setattr(owner, name, armed_call)


@dataclass
class ChildResult:
    killed: bool
    events: int | None = None
    error: str | None = None


def run_in_child(work: Callable[[KillSwitch], None], kill_at: int | None = None) -> ChildResult:
    """Run `work(switch)` in a forked child; returns whether SIGKILL ended it and how many writes it counted."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        status, message = 0, {}
        try:
            switch = KillSwitch(kill_at)
            sys.addaudithook(switch.hook)
            work(switch)
            message = {"events": switch.count}
        except BaseException:
            status, message = 1, {"error": traceback.format_exc()[-4000:]}
        os.write(write_end, json.dumps(message).encode())
        os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    message = json.loads(b"".join(chunks) or b"{}")
    return ChildResult(killed=killed, events=message.get("events"), error=message.get("error"))


def run_clean(work: Callable[[KillSwitch], None], what: str) -> ChildResult:
    """`run_in_child` without a kill; raises when the work fails."""
    result = run_in_child(work)
    if result.error or result.killed:
        raise RuntimeError(f"{what} failed:\n{result.error}")
    return result


def kill_in_copy(template: Path, folder: Path, work: Callable, kill_at: int) -> tuple[ChildResult, list[str]]:
    """Copy `template` to `folder` and run `work(folder)` killed at write `kill_at`; (result, problems so far)."""
    shutil.copytree(template, folder)
    child = run_in_child(work(folder), kill_at=kill_at)
    return child, ([] if child.killed else [f"not killed ({child.error or 'finished'})"])


# ============================================================================================ helpers


def load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_fault_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_rqvae(argv: list[str]) -> None:
    from rq_hf.training.script_utils import reset_accelerate_state

    reset_accelerate_state()
    load_example("train_rqvae").main(argv)


def train_argv(dataset: str, model_config: str | None, output_dir: str | os.PathLike, steps: int, **extra) -> list[str]:
    flags = {
        "--dataset_name": dataset, "--model_config_name_or_path": model_config, "--output_dir": str(output_dir),
        "--max_train_steps": str(steps), "--train_batch_size": "4", "--max_train_samples": "16",
        "--checkpointing_steps": "2", "--checkpoints_total_limit": "1", "--disc_weight": "0",
        "--validation_steps": "1000", "--num_validation_images": "2", "--report_to": "none", "--seed": "0", **extra,
    }
    argv = []
    for key, value in flags.items():
        if value is not None:
            argv += [key, value]
    return argv


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def model_weights(folder: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ============================================================================================ scenarios


@dataclass
class Outcome:
    kill_at: int
    killed: bool
    lost: bool
    detail: str


@dataclass
class ScenarioReport:
    name: str
    writes: int
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def points(self) -> int:
        return len(self.outcomes)

    @property
    def lost(self) -> int:
        return sum(o.lost for o in self.outcomes)


def checkpoint_scenario(root: Path, dataset: str, model_config: str | None, pick: Callable[[int], list[int]]):
    """Kill training while it writes its checkpoints; resume from `latest`; compare with an uninterrupted run."""
    from rq_hf.training.script_utils import get_last_checkpoint

    def work(output_dir, resume=False):
        def run(switch: KillSwitch) -> None:
            import rq_hf.training.script_utils as script_utils

            real = script_utils.save_checkpoint

            def save_and_record(accelerator, out, step, *args, **kwargs):
                with switch.armed():
                    path = real(accelerator, out, step, *args, **kwargs)
                with open(os.path.join(root, f"{Path(out).name}.done"), "a") as f:
                    f.write(f"{step}\n")
                return path

            script_utils.save_checkpoint = save_and_record
            extra = {"--resume_from_checkpoint": "latest"} if resume else {}
            train_rqvae(train_argv(dataset, model_config, output_dir, 4, **extra))

        return run

    reference = run_clean(work(root / "reference"), "the uninterrupted run")
    expected = model_weights(root / "reference")
    report = ScenarioReport("checkpoint", reference.events)
    for k in pick(reference.events):
        out = root / f"killed-{k}"
        child = run_in_child(work(out), kill_at=k)
        done_file = root / f"{out.name}.done"
        done = [int(s) for s in done_file.read_text().split()] if done_file.exists() else []
        latest = get_last_checkpoint(str(out))
        latest_step = int(latest.rsplit("-", 1)[1]) if latest else 0
        problems = []
        if not child.killed:
            problems.append(f"not killed ({child.error or 'finished'})")
        if done and latest_step < max(done):
            problems.append(f"latest is step {latest_step}, but checkpoint {max(done)} had been saved")
        resumed = run_in_child(work(out, resume=True))
        if resumed.error or resumed.killed:
            problems.append(f"resume failed: {(resumed.error or 'killed').strip().splitlines()[-1]}")
        elif not close_tensors(model_weights(out), expected):
            problems.append("the resumed run ended with other weights than an uninterrupted run")
        leftovers = [n for n in os.listdir(out) if n.startswith(".")]
        leftovers += [n for n in os.listdir(root) if n.startswith(f".{out.name}.")]
        if leftovers:
            problems.append(f"the resumed run's saves left {leftovers} behind")
        detail = "; ".join(problems) or f"resumed from step {latest_step} (saved before the kill: {done or 'none'})"
        report.outcomes.append(Outcome(k, child.killed, bool(problems), detail))
        shutil.rmtree(out, ignore_errors=True)
    return report


def train_save_scenario(root: Path, dataset: str, model_config: str | None, pick: Callable[[int], list[int]]):
    """Kill the final save_pretrained (its model card, training section included, is one of its files) of a run that
    continues training over an older model."""
    from rq_hf import RQVAEModel
    from rq_hf.training.script_utils import get_last_checkpoint

    template = root / "two-steps"
    run_clean(lambda switch: train_rqvae(train_argv(dataset, model_config, template, 2)), "the first run")
    old = model_weights(template)

    def work(output_dir):
        def run(switch: KillSwitch) -> None:
            from rq_hf.models.hub_utils import RQHubMixin

            switch.wrap(RQHubMixin, "save_pretrained")
            train_rqvae(train_argv(dataset, model_config, output_dir, 4, **{"--resume_from_checkpoint": "latest"}))

        return run

    shutil.copytree(template, root / "reference")
    reference = run_clean(work(root / "reference"), "the uninterrupted run")
    new = model_weights(root / "reference")
    report = ScenarioReport("train_save_pretrained", reference.events)
    for k in pick(reference.events):
        out = root / f"killed-{k}"
        child, problems = kill_in_copy(template, out, work, k)
        try:
            loaded = state(RQVAEModel.from_pretrained(out))
            which = "old" if same_tensors(loaded, old) else "new" if same_tensors(loaded, new) else None
            if which is None:
                problems.append("loads neither the old nor the new model")
        except Exception as err:  # noqa: BLE001 - any failure to load is lost data
            which = None
            problems.append(f"does not load: {type(err).__name__}: {str(err)[:200]}")
        if get_last_checkpoint(str(out)) != str(out / "checkpoint-4"):
            problems.append(f"latest checkpoint is {get_last_checkpoint(str(out))}, not checkpoint-4")
        report.outcomes.append(Outcome(k, child.killed, bool(problems), "; ".join(problems) or f"loads the {which}"))
        shutil.rmtree(out, ignore_errors=True)
    return report


def tiny_pipeline(seed: int):
    import torch

    from rq_hf import RQTransformerConfig, RQTransformerForCausalImageModeling, RQTransformerPipeline, RQVAEModel

    torch.manual_seed(seed)
    vae = RQVAEModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                     latent_channels=8, norm_num_groups=4, sample_size=8, codebook_size=16, code_depth=2)
    config = RQTransformerConfig(vocab_size=16, code_shape=[4, 4, 2], hidden_size=16, num_spatial_layers=1,
                                 num_depth_layers=1, num_attention_heads=2, num_classes=2, code_embedding_dim=8)
    return RQTransformerPipeline(vqvae=vae, transformer=RQTransformerForCausalImageModeling(config))


def raw_pipeline_weights(folder: Path) -> dict | None:
    """The weight files of a pipeline folder as they are on disk (None when one is missing)."""
    from safetensors.torch import load_file

    files = {"vqvae": "diffusion_pytorch_model.safetensors", "transformer": "model.safetensors"}
    if not all((folder / n / f).is_file() for n, f in files.items()):
        return None
    return {n: load_file(folder / n / f) for n, f in files.items()}


def pipeline_save_scenario(root: Path, pick: Callable[[int], list[int]]):
    """Kill RQTransformerPipeline.save_pretrained over an older pipeline; the folder must load as one of them."""
    from rq_hf import RQTransformerPipeline
    from rq_hf.models.atomic_save import JOURNAL

    old_pipe, new_pipe = tiny_pipeline(0), tiny_pipeline(1)
    old = {n: state(getattr(old_pipe, n)) for n in ("vqvae", "transformer")}
    new = {n: state(getattr(new_pipe, n)) for n in ("vqvae", "transformer")}
    template = root / "old-pipeline"
    old_pipe.save_pretrained(template)

    def work(folder):
        def run(switch: KillSwitch) -> None:
            with switch.armed():
                new_pipe.save_pretrained(folder)

        return run

    shutil.copytree(template, root / "reference")
    reference = run_clean(work(root / "reference"), "the uninterrupted save")
    report = ScenarioReport("pipeline_save_pretrained", reference.events)
    for k in pick(reference.events):
        folder = root / f"killed-{k}"
        child, problems = kill_in_copy(template, folder, work, k)
        if (folder / JOURNAL).exists() and (folder / "model_index.json").exists():
            # a commit is pending and the folder is loadable by any loader (no recovery): it must be one save
            raw = raw_pipeline_weights(folder)
            if raw is None or not any(all(same_tensors(raw[n], ref[n]) for n in raw) for ref in (old, new)):
                problems.append("a commit is pending and the folder, read as it is, mixes the two saves")
        try:
            loaded = RQTransformerPipeline.from_pretrained(folder)
            got = {n: state(getattr(loaded, n)) for n in ("vqvae", "transformer")}
            which = next((name for name, ref in (("old", old), ("new", new))
                          if all(same_tensors(got[n], ref[n]) for n in got)), None)
            if which is None:
                problems.append("the components come from different saves (a mix) or match neither")
        except Exception as err:  # noqa: BLE001 - any failure to load is lost data
            which = None
            problems.append(f"does not load: {type(err).__name__}: {str(err)[:200]}")
        report.outcomes.append(Outcome(k, child.killed, bool(problems), "; ".join(problems) or f"loads the {which}"))
        shutil.rmtree(folder, ignore_errors=True)
    return report


# ============================================================================================ driver


def run(
    points: int | None = None,
    seed: int = 0,
    dataset: str = "fashion_mnist",
    model_config: str | None = None,
    scenarios: tuple[str, ...] = SCENARIOS,
    workdir: str | None = None,
) -> list[ScenarioReport]:
    """Run the scenarios; `points` random kill points each (seeded), or every write when None."""
    rng = random.Random(seed)

    def pick(writes: int) -> list[int]:
        if points is None or points >= writes:
            return list(range(1, writes + 1))
        return sorted(rng.sample(range(1, writes + 1), points))

    reports = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in scenarios:
            root = Path(tmp) / name
            root.mkdir()
            if name == "checkpoint":
                reports.append(checkpoint_scenario(root, dataset, model_config, pick))
            elif name == "train_save_pretrained":
                reports.append(train_save_scenario(root, dataset, model_config, pick))
            elif name == "pipeline_save_pretrained":
                reports.append(pipeline_save_scenario(root, pick))
            else:
                raise ValueError(f"`scenarios` must be among {SCENARIOS}, got {name!r}")
    return reports


def table(reports: list[ScenarioReport]) -> str:
    lines = ["| scenario | writes in the save window | kill points tried | killed | data lost |",
             "| --- | --- | --- | --- | --- |"]
    for r in reports:
        lines.append(f"| {r.name} | {r.writes} | {r.points} | {sum(o.killed for o in r.outcomes)} | {r.lost} |")
    total = sum(r.points for r in reports), sum(r.lost for r in reports)
    lines.append(f"| all | | {total[0]} | {sum(sum(o.killed for o in r.outcomes) for r in reports)} | {total[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[ScenarioReport]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=None, help="Random kill points per scenario (default: all).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random kill points.")
    parser.add_argument("--dataset_name", default="fashion_mnist", help="Training data of the training scenarios.")
    parser.add_argument("--model_config", default=None, help="RQ-VAE config JSON (default: train_rqvae's tiny one).")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--output_json", default=None, help="Write every outcome here.")
    args = parser.parse_args(argv)
    if args.points is not None and args.points < 1:
        parser.error(f"`--points` must be >= 1, got {args.points}")
    import torch

    torch.set_num_threads(1)
    reports = run(args.points, args.seed, args.dataset_name, args.model_config, tuple(args.scenarios))
    print(table(reports))
    for r in reports:
        for o in r.outcomes:
            if o.lost:
                print(f"LOST {r.name} at write {o.kill_at}: {o.detail}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump([{**asdict(r), "points": r.points, "lost": r.lost} for r in reports], f, indent=1)
    return reports


if __name__ == "__main__":
    sys.exit(1 if sum(r.lost for r in main()) else 0)
