"""The one training path every training stage shares: `TrainingRun`.

A stage keeps what is its own (the rows it trains on, how it builds its TRL trainer, the
metrics only it knows); the run owns everything around the trainer, the same way for sft,
dpo@R, grpo and cls_sleep:

    run = TrainingRun("sft", p.used(), [tasks_path, model_dir], out=..., metrics=...,
                      live_dir="dvclive/sft", checkpoints="checkpoints/sft")
    trainer = SFTTrainer(model, args=SFTConfig(**run.trainer_args(p.sft, seed=p.seed, model=p.model)), ...)
    history = run.train(trainer)              # resumes from this run's last checkpoint
    run.save(trainer.model, trainer.processing_class)
    run.finish({"final_loss": final_log(history, "loss"), ...})

What the run guarantees, and why:

- Checkpoints live in `checkpoints/<stage>/<fingerprint>/`, outside the outs (DVC deletes
  outs before a stage runs); the fingerprint covers params and input files, so a changed run
  never resumes an old one's checkpoint.
- A resumed run reports what an uninterrupted one does. `train_loss` is the mean loss of every
  step of the run, read from the full `log_history` (the Trainer's own figure averages only
  the steps of the current process); the Trainer is made to log the last step too, so no
  step is left out of that history. DVCLive rows are keyed by the trainer's global step, and
  on resume every series is cut back to the checkpoint's step before training goes on
  (DVCLive's `resume=True` appends, so the steps between the checkpoint and the kill would
  appear twice).
- A failed run leaves the last good curves alone. DVCLive writes into the checkpoint folder
  while training (`Live(resume=False)` empties its folder when it starts, which is how a
  failed run used to wipe the git-tracked `dvclive/<stage>`); the finished series replaces
  `dvclive/<stage>` in one rename at the end.
- The adapter folder (safetensors, tokenizer, `lineage.json`) appears whole or not at all, and
  its `adapter_config.json` is byte-stable: peft writes `target_modules` in set order, which
  changes with PYTHONHASHSEED and so changed `dvc.lock` on every run; the run sorts it.
- Outs are published in order adapter, curves, metrics; checkpoints are removed last, so a
  kill anywhere before the metrics file exists resumes instead of starting over.
- Several processes (`python -m bioreasoner.training.launch`, [D16]): the run reads the launch plan
  from `BIOREASONER_LAUNCH` and stops with one error line when the trainer's world size or
  strategy is not the one asked for (a launcher that silently starts one process, independent
  rank-0 runs, or DDP instead of FSDP). With `keep_global_batch` each of N processes takes
  1/N of `per_device_train_batch_size`, so the global batch and step count match one process.
  Every rank checks that the adapters are identical across ranks; only rank 0 writes the
  adapter, the curves, the metrics and other outs (`on_main`). The metrics record the launch
  (launcher, strategy, world size, batch sizes, accelerator and device).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

from bioreasoner.core import env, lineage
from bioreasoner.core.io import atomic_path, write_json
from bioreasoner.modeling.models import is_4bit
from bioreasoner.training.common import checkpoint_dir, fingerprint
from bioreasoner.training.launch import LaunchError, Plan

if TYPE_CHECKING:
    from bioreasoner.core.config import LoraCfg, ModelCfg, Section

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# adapter_config.json fields that are collections of module names: peft keeps some as sets, so
# their order is the hash order of one process; the order carries no meaning, so we sort them.
NAME_SET_FIELDS = ("target_modules", "exclude_modules", "modules_to_save", "target_parameters")
SAVE_TOTAL_LIMIT = 2  # checkpoints kept: the newest, and one before it in case the newest is torn
LIVE_STAGING = "dvclive"  # the DVCLive folder inside the checkpoint folder while training


# ----------------------------------------------------------------------------- trainer pieces


def lora_config(cfg: LoraCfg) -> LoraConfig:
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=sorted(cfg.target_modules),
        # The tiny base starts from random embeddings, which LoRA cannot move: train them in full.
        modules_to_save=sorted(cfg.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


class WholeRunLog(TrainerCallback):
    """Makes the log history cover the whole run, also after a resume.

    - Logs the last step even when it is not a multiple of `logging_steps`, so every step's
      loss is in `log_history` (the Trainer keeps the tail only in a private accumulator).
    - Rewrites the end-of-run `train_loss` (which the Trainer averages over the steps this
      process ran) to the mean over all steps, from the history.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "train_loss" in logs:
            whole = mean_train_loss(state.log_history)
            if whole is not None:
                logs["train_loss"] = whole
                state.log_history[-1]["train_loss"] = whole


# Wall-clock measurements (train_runtime, *_per_second, GRPO's step_time) differ on every run:
# kept out of the git-tracked curves, or two identical runs would give different dvc.lock hashes.
WALL_CLOCK = ("runtime", "per_second", "step_time")


class LiveCurves(TrainerCallback):
    """DVCLive series keyed by the trainer's global step, resumable without duplicate rows.

    The Trainer's end-of-run summary (train_loss) goes to DVCLive's metrics.json only, not into
    a one-row series; wall-clock values (`WALL_CLOCK`) go nowhere.
    """

    def __init__(self, directory: str | Path, resume: bool):
        self.directory = Path(directory)
        self.resume = resume
        self.live: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        from dvclive import Live

        if not state.is_world_process_zero:
            return
        if self.resume:
            dropped = truncate_series(self.directory, state.global_step)
            log.info("DVCLive: resuming at step %d (%d rows past the checkpoint dropped)", state.global_step, dropped)
        self.live = Live(str(self.directory), resume=self.resume, dvcyaml=None, save_dvc_exp=False)
        if not self.resume:
            self.live.log_params(args.to_dict())  # the TRL config as run, beside the curves

    def on_log(self, args, state, control, logs=None, **kwargs):
        from dvclive.plots import Metric
        from dvclive.utils import standardize_metric_name

        if self.live is None or not logs:
            return
        summary_only = "train_runtime" in logs  # the Trainer's end-of-run line, not a point of a curve
        self.live.step = state.global_step
        for key, value in logs.items():
            if Metric.could_log(value) and not any(w in key for w in WALL_CLOCK):
                name = standardize_metric_name(key, "dvclive.huggingface")
                self.live.log_metric(name, value, plot=not summary_only)
        self.live.make_summary()


def truncate_series(directory: str | Path, step: int) -> int:
    """Cut every DVCLive series under `directory` back to rows with step <= `step`; returns
    the number of rows dropped. Rows up to a checkpoint were closed before it was written,
    so only rows past it can be torn by a kill, and those are the ones dropped."""
    dropped = 0
    for tsv in sorted(Path(directory, "plots", "metrics").rglob("*.tsv")):
        with open(tsv, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        keep = [r for r in rows[1:] if len(r) == len(rows[0]) and r[col].isdigit() and int(r[col]) <= step]
        dropped += len(rows) - 1 - len(keep)
        with open(tsv, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([rows[0], *keep])
    return dropped


# ----------------------------------------------------------------------------- log history


def mean_train_loss(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The mean per-step training loss of the whole run: each logged `loss` is the mean over
    the steps since the previous log, so it is weighted by that window's length."""
    total, prev = 0.0, 0
    for entry in history:
        if "loss" in entry and "step" in entry and entry["step"] > prev:
            total += entry["loss"] * (entry["step"] - prev)
            prev = entry["step"]
    return total / prev if prev else None


def final_log(history: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The last value of `key` the trainer logged."""
    for entry in reversed(history):
        if key in entry:
            return entry[key]
    return None


def first_last(history: Sequence[Mapping[str, Any]], key: str, k: int = 5) -> dict[str, float | None]:
    """Mean of the first and of the last `k` logged values (single steps are noisy)."""
    values = [h[key] for h in history if key in h]
    if not values:
        return {"first": None, "last": None}
    return {"first": round(sum(values[:k]) / len(values[:k]), 4), "last": round(sum(values[-k:]) / len(values[-k:]), 4)}


# ----------------------------------------------------------------------------- saving


def stabilize_adapter_config(folder: str | Path) -> None:
    """Sort the module-name collections of `adapter_config.json` (peft writes sets in hash order)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in NAME_SET_FIELDS:
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")  # peft's own layout


def save_adapter(model: Any, folder: str | Path, adapter: str | None = None) -> None:
    """The LoRA adapter (safetensors) of a peft model into `folder`; `adapter` picks one of
    several, saved at the top level like a single-adapter model (peft puts a non-default
    adapter in a subfolder named after it)."""
    folder = Path(folder)
    kwargs = {"selected_adapters": [adapter]} if adapter else {}
    model.save_pretrained(str(folder), safe_serialization=True, **kwargs)
    sub = folder / adapter if adapter and adapter != "default" else None
    if sub is not None and sub.is_dir():
        for f in sub.iterdir():
            f.replace(folder / f.name)
        sub.rmdir()
    stabilize_adapter_config(folder)


# ----------------------------------------------------------------------------- processes


def rank() -> int:
    """This process's global rank (0 when not launched by torchrun / accelerate)."""
    return int(os.environ.get("RANK", "0"))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_ranks(value: Any) -> list[Any]:
    """`value` from every rank, in rank order ([value] in a single process)."""
    if not _distributed():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def adapter_digest(model: Any, adapter: str | None = None) -> str:
    """sha256 over the adapter's tensors (names sorted) as `save_pretrained` writes them; for a
    model without adapters (pretrain), over its whole state dict."""
    from peft import get_peft_model_state_dict

    if hasattr(model, "peft_config"):
        state = get_peft_model_state_dict(model, adapter_name=adapter or "default")
    else:
        state = model.state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """`adapter_digest` of a loaded safetensors file (tests compare ranks with what was saved)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def accelerator(device: torch.device | None = None) -> dict[str, str]:
    """{"accelerator": cpu | cuda, "device": the CPU model or the GPU name}."""
    kind = device.type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return {"accelerator": "cuda", "device": torch.cuda.get_device_name(device)}
    return {"accelerator": kind, "device": env.cpu_model()}


# ----------------------------------------------------------------------------- the run


class TrainingRun:
    """One training stage's run: checkpoints and resume, DVCLive, the adapter folder with its
    lineage, the metrics file and cleanup (see the module docstring for the guarantees).

    `params` is what the stage read (`StageParams.used()`, or a narrower view): it goes into
    the checkpoint fingerprint and into `lineage.json`. `inputs` are the files and folders the
    run reads; their DVC hashes go into the lineage and their contents into the fingerprint.
    `live_dir=None`: the stage keeps no curves; `checkpoints=None`: it does not resume.
    """

    def __init__(
        self,
        stage: str,
        params: Mapping[str, Any],
        inputs: Sequence[str | Path],
        *,
        out: str | Path,
        metrics: str | Path,
        live_dir: str | Path | None = None,
        checkpoints: str | Path | None = None,
    ):
        self.stage = stage
        self.params = dict(params)
        self.inputs = [str(p) for p in inputs]
        self.out = Path(out)
        self.metrics_path = Path(metrics)
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.checkpoint: Path | None = None
        self.resume_from: str | None = None
        if checkpoints is not None:
            self.checkpoint, self.resume_from = checkpoint_dir(checkpoints, fingerprint(self.params, self.inputs))
        self.history: list[dict[str, Any]] = []
        self.global_step = 0
        self.plan = Plan.from_env(stage.split("@")[0])  # how the launcher started this stage
        self.launch: dict[str, Any] = {
            "launcher": self.plan.launcher,
            "strategy": self.plan.strategy,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            **accelerator(),
        }

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outs, curves and metrics."""
        return rank() == 0

    def on_main(self, write: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `write` on rank 0 only (an out the stage writes itself, e.g. grpo's prompts)."""
        return write(*args, **kwargs) if self.is_main else None

    # -- training

    @property
    def output_dir(self) -> str:
        """The Trainer's `output_dir`: this run's checkpoint folder."""
        if self.checkpoint is None:
            raise ValueError(f"{self.stage}: a run without `checkpoints` has no trainer output_dir")
        return str(self.checkpoint)

    def trainer_args(self, cfg: Section, *, seed: int, model: ModelCfg) -> dict[str, Any]:
        """Keyword arguments for SFTConfig / DPOConfig / GRPOConfig: the section's TRL fields
        under their own names, plus what every stage sets the same way."""
        kwargs = cfg.trainer_kwargs()
        if self.plan.keep_global_batch and self.plan.processes > 1:  # config.py checked it divides
            kwargs["per_device_train_batch_size"] = cfg.per_device_train_batch_size // self.plan.processes
        return {
            **kwargs,
            "output_dir": self.output_dir,
            "seed": seed,
            "data_seed": seed,
            "gradient_checkpointing_kwargs": {"use_reentrant": False},  # [D9]: reentrant + LoRA loses grads
            "bf16": model.dtype == "bfloat16" if cfg.bf16 is None else cfg.bf16,
            "save_total_limit": SAVE_TOTAL_LIMIT,
            "report_to": "none",  # DVCLive is attached by `train`, into this run's staging folder
            "use_cpu": not torch.cuda.is_available(),
        }

    def train(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Train to the end (resuming from this run's last checkpoint); the whole log history."""
        self.check_launch(trainer)
        trainer.add_callback(WholeRunLog())
        if self.live_dir is not None:
            trainer.add_callback(LiveCurves(self._staged_curves(), resume=self.resume_from is not None))
        trainer.train(resume_from_checkpoint=self.resume_from)
        self.history = list(trainer.state.log_history)
        self.global_step = trainer.state.global_step
        return self.history

    def check_launch(self, trainer: Trainer) -> None:
        """The trainer's world size and strategy are the launch plan's, or one error line (a
        silent fallback would otherwise train, and publish, a different run)."""
        args, plan = trainer.args, self.plan
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        problem = None
        if args.world_size != launched:
            problem = (
                f"the launcher started {launched} processes but each trainer sees world size {args.world_size}: "
                "independent runs, each writing outputs (accelerate --multi_gpu on a machine without CUDA?)"
            )
        elif args.world_size != plan.processes:
            problem = (
                f"launch.{plan.stage} asks for {plan.processes} process(es) ({plan.launcher}), the trainer sees "
                f"world size {args.world_size}"
                + (
                    "; start stages through `python -m bioreasoner.training.launch`"
                    if plan.launcher == "python"
                    else ""
                )
            )
        elif plan.strategy == "fsdp" and not trainer.is_fsdp_enabled:
            problem = "strategy fsdp asked, but the trainer runs without FSDP (a silent fallback to DDP)"
        elif plan.strategy.startswith("deepspeed") and not trainer.is_deepspeed_enabled:
            problem = f"strategy {plan.strategy} asked, but the trainer runs without DeepSpeed (a silent fallback)"
        if problem:
            raise LaunchError(f"stage {self.stage}", f"rank {rank()}", problem)
        self.launch.update(
            world_size=args.world_size,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            global_train_batch_size=args.per_device_train_batch_size
            * args.world_size
            * args.gradient_accumulation_steps,
            **accelerator(args.device),
        )
        log.info("%s: rank %d of %d, %s", self.stage, rank(), args.world_size, self.launch)

    def _staged_curves(self) -> Path:
        return Path(self.output_dir) / LIVE_STAGING

    # -- outputs

    @contextlib.contextmanager
    def saving(self, *, note: str | None = None, loaded_in_4bit: bool = False) -> Iterator[Path]:
        """A temp folder that becomes `out`, with a stable adapter config and `lineage.json`,
        only if the block succeeds. For outs made otherwise than by `save`."""
        with atomic_path(self.out, directory=True) as tmp:
            yield tmp
            stabilize_adapter_config(tmp)
            record = lineage.record(f"{self.stage} ({note})" if note else self.stage, self.params, self.inputs)
            record["loaded_in_4bit"] = loaded_in_4bit  # merge's card says QLoRA only when this is true
            lineage.write(tmp, record)

    def save(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        adapter: str | None = None,
        note: str | None = None,
    ) -> None:
        """The adapter (safetensors), the tokenizer and the lineage, as `out`, atomically; with
        several processes, after checking that every rank holds the same adapter."""
        digests = all_ranks(adapter_digest(model, adapter))
        log.info("%s: rank %d adapter sha256 %s", self.stage, rank(), digests[rank() if len(digests) > 1 else 0])
        if len(set(digests)) > 1:
            raise LaunchError(f"stage {self.stage}", f"rank {rank()}", f"the ranks' adapters differ: {digests}")
        if not self.is_main:
            return
        with self.saving(note=note, loaded_in_4bit=is_4bit(model)) as tmp:
            save_adapter(model, tmp, adapter=adapter)
            tokenizer.save_pretrained(str(tmp))
        log.info("%s: rank %d saved the adapter to %s", self.stage, rank(), self.out)

    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Publish the curves, write the metrics (with the whole run's `train_loss` and
        `global_step` when it trained), then remove the checkpoints."""
        out = dict(metrics)
        if self.history:
            loss = mean_train_loss(self.history)
            out.setdefault("train_loss", round(loss, 4) if loss is not None else None)
            out.setdefault("global_step", self.global_step)
        out.setdefault("launch", dict(self.launch))
        if not self.is_main:
            barrier()  # rank 0 publishes; the others wait so that no rank ends before the outs exist
            return out
        if self.live_dir is not None:
            staged = self._staged_curves() if self.checkpoint is not None else None
            with atomic_path(self.live_dir, directory=True) as tmp:
                if staged is not None and staged.is_dir():
                    shutil.copytree(staged, tmp, dirs_exist_ok=True)
                if not any(tmp.iterdir()):  # a run that never trained (dpo without pairs) logged nothing:
                    # git cannot hold an empty folder, so a fresh clone would miss this git-tracked
                    # out (`dvc status`: deleted); DVCLive's summary file keeps it (the report skips
                    # folders without plots/metrics)
                    write_json(tmp / "metrics.json", out)
        write_json(self.metrics_path, out)
        log.info("%s: rank %d published the curves and %s", self.stage, rank(), self.metrics_path)
        if self.checkpoint is not None:
            shutil.rmtree(self.checkpoint, ignore_errors=True)  # finished: nothing left to resume
        barrier()
        return out
