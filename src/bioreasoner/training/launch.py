"""Start a training stage the way `launch.<stage>` in params.yaml says [D16].

    python -m bioreasoner.training.launch sft -- stages/sft.py --tasks data/tasks/train.jsonl ...
    python -m bioreasoner.training.launch sft --dry-run -- stages/sft.py ...   # print the command only

The stage's cmd in dvc.yaml goes through this module, so the graph stays in dvc.yaml and the
number of processes is a param (`dvc exp run -S launch.sft.processes=2`). What it execs:

- processes 1, strategy ddp: `python stages/<stage>.py ...` (the default: one process);
- processes N, strategy ddp: `python -m torch.distributed.run --standalone --nproc-per-node N
  stages/<stage>.py ...` (gloo on CPU, NCCL on GPUs);
- deepspeed_zero2 / deepspeed_zero3 / fsdp: `python -m accelerate.commands.launch --config_file
  configs/accelerate/<strategy>.yaml --num_processes N stages/<stage>.py ...` (CUDA only).

The plan travels to the stage in the `BIOREASONER_LAUNCH` environment variable; the training
lifecycle checks that the trainer sees exactly that world size and strategy, so a launcher
that silently starts fewer processes, independent rank-0 runs, or falls back to DDP stops the
stage with an error instead of training the wrong run. Traps refused here, before anything
starts (measured with accelerate 1.15 on a CPU machine):

- `accelerate launch --cpu --num_processes 2` starts ONE process (no error, no warning).
- `accelerate launch --multi_gpu` on a CPU machine, with a trainer that does not pass
  `use_cpu`, starts N processes that each think they are rank 0 of 1: N runs writing outputs.
- FSDP or DeepSpeed requested without CUDA: the Trainer quietly runs plain DDP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from bioreasoner.core import config
from bioreasoner.core.config import LAUNCHED_STAGES, LaunchCfg
from bioreasoner.core.io import BadInputError, load_yaml, run_stage

log = logging.getLogger("launch")

ENV = "BIOREASONER_LAUNCH"  # the plan, as JSON, for the stage's TrainingRun to check against
CONFIG_DIR = Path("configs/accelerate")  # shipped accelerate configs, one per sharded strategy
ACCELERATE_STRATEGIES = ("deepspeed_zero2", "deepspeed_zero3", "fsdp")
# What accelerate's `distributed_type` must be for each strategy's shipped config.
DISTRIBUTED_TYPE = {"deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}


class LaunchError(BadInputError):
    """A launch the machine or the config cannot do as asked: one line, exit 1, nothing started."""


@dataclass(frozen=True)
class Plan:
    """How one stage runs: what the lifecycle checks and what metrics record."""

    stage: str
    launcher: str  # python | torchrun | accelerate
    strategy: str  # none (one process) | ddp | deepspeed_zero2 | deepspeed_zero3 | fsdp
    processes: int
    keep_global_batch: bool = True
    config_file: str | None = None  # the accelerate config, for accelerate launches

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, stage: str) -> Plan:
        """The plan the launcher passed down, or plain one-process python when there was none."""
        raw = os.environ.get(ENV)
        if not raw:
            return cls(stage=stage, launcher="python", strategy="none", processes=1)
        return cls(**json.loads(raw))


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_accelerate_config(path: str | Path, strategy: str, processes: int, cuda_devices: int) -> dict[str, Any]:
    """The parsed accelerate config, or a `LaunchError` for each known trap."""
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise LaunchError(path, None, "must be a YAML mapping (an accelerate config)")
    dist = str(cfg.get("distributed_type", "NO"))
    if cfg.get("use_cpu") or dist == "MULTI_CPU":
        raise LaunchError(
            path,
            "use_cpu",
            f"`accelerate launch --cpu` starts one process whatever num_processes says ({processes} asked): "
            "for CPU processes use strategy ddp (torchrun)",
        )
    if strategy in DISTRIBUTED_TYPE and dist != DISTRIBUTED_TYPE[strategy]:
        need = DISTRIBUTED_TYPE[strategy]
        raise LaunchError(path, "distributed_type", f"is {dist}, but strategy {strategy} needs {need}")
    if cuda_devices == 0:
        what = {
            "MULTI_GPU": "starts independent rank-0 runs that each write the outputs",
            "FSDP": "silently falls back to DDP",
            "DEEPSPEED": "silently falls back to DDP",
        }.get(dist, "has no GPU to run on")
        raise LaunchError(
            path,
            "distributed_type",
            f"{dist} on a machine without CUDA {what}: use strategy ddp (torchrun, gloo) on CPU",
        )
    if processes > cuda_devices:
        raise LaunchError(path, "num_processes", f"{processes} processes asked, this machine has {cuda_devices} GPU(s)")
    return cfg


def plan(
    stage: str, cfg: LaunchCfg, *, cuda_devices: int, deepspeed_installed: bool, config_dir: Path = CONFIG_DIR
) -> Plan:
    """The launch for `launch.<stage>` on a machine with `cuda_devices` GPUs; traps refused."""
    where = f"launch.{stage}"
    if cfg.strategy == "ddp":
        if cuda_devices and cfg.processes > cuda_devices:
            raise LaunchError(
                "params.yaml", f"{where}.processes", f"{cfg.processes} processes but {cuda_devices} GPU(s)"
            )
        launcher = "python" if cfg.processes == 1 else "torchrun"
        strategy = "none" if cfg.processes == 1 else "ddp"
        return Plan(stage, launcher, strategy, cfg.processes, cfg.keep_global_batch)
    config_file = config_dir / f"{cfg.strategy}.yaml"
    if not config_file.is_file():
        raise LaunchError(config_file, None, f"the accelerate config for {where}.strategy {cfg.strategy} is missing")
    check_accelerate_config(config_file, cfg.strategy, cfg.processes, cuda_devices)
    if cfg.strategy.startswith("deepspeed") and not deepspeed_installed:
        raise LaunchError(
            "params.yaml",
            f"{where}.strategy",
            f"{cfg.strategy} needs the deepspeed package, which is not installed (pip install deepspeed, on CUDA)",
        )
    return Plan(stage, "accelerate", cfg.strategy, cfg.processes, cfg.keep_global_batch, str(config_file))


def command(p: Plan, script_args: list[str]) -> list[str]:
    """The argv that runs the stage script under plan `p`."""
    py = sys.executable
    if p.launcher == "python":
        return [py, *script_args]
    if p.launcher == "torchrun":
        # --standalone: a free local rendezvous port, so parallel runs (dvc queue -j 2) never clash
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={p.processes}", *script_args]
    return [
        py,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(p.config_file),
        "--num_processes",
        str(p.processes),
        *script_args,
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, script = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s STAGE [--params P] -- SCRIPT ...")
    ap.add_argument("stage", choices=LAUNCHED_STAGES, help="whose launch.<stage> entry to use")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    args = ap.parse_args(ours)
    if not script or not script[0].endswith(".py"):
        ap.error("give the stage script after `--`, e.g. -- stages/sft.py --tasks ...")
    args.script = script
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    p = config.load(args.params, sections=("launch",))  # the whole file validated, as the stage will
    cfg: LaunchCfg = getattr(p.launch, args.stage)
    the_plan = plan(
        args.stage, cfg, cuda_devices=cuda_device_count(), deepspeed_installed=find_spec("deepspeed") is not None
    )
    argv = command(the_plan, args.script)
    log.info("%s: %s", args.stage, " ".join(argv))
    if args.dry_run:
        print(" ".join(argv))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[ENV] = the_plan.to_env()
    os.execv(argv[0], argv)  # replaces this process: dvc sees the stage's own exit status


if __name__ == "__main__":
    run_stage(main)
