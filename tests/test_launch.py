"""Launching training stages (`python -m bioreasoner.training.launch`, [D16]): the command each
`launch.<stage>` entry becomes, a clear error for each known trap, the shipped DeepSpeed/FSDP
configs parsed into trainer arguments without a GPU, and sft, dpo and grpo run for real with 2
processes on gloo against the same micro run in one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from safetensors.torch import load_file

from bioreasoner.core.config import LaunchCfg
from bioreasoner.core.io import BadInputError, run_stage
from bioreasoner.core.records import Message, Pair
from bioreasoner.training import launch
from bioreasoner.training.launch import ENV, LaunchError, Plan, check_accelerate_config, command, plan
from bioreasoner.training.lifecycle import TrainingRun, state_digest
from tests.conftest import ROOT
from tests.params_edit import params_data, stage_params, write_params
from tests.tiny import load_stage

SHIPPED = ROOT / "configs" / "accelerate"


def machine(**kw):
    return {"cuda_devices": 0, "deepspeed_installed": False, "config_dir": SHIPPED, **kw}


# -- the command a launch entry becomes ---------------------------------------------------------


def test_default_is_one_plain_python_process(capsys):
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())["launch"]
    assert {s: c["processes"] for s, c in committed.items()} == {"sft": 1, "dpo": 1, "grpo": 1}
    p = plan("sft", LaunchCfg(), **machine())
    assert (p.launcher, p.strategy, p.processes) == ("python", "none", 1)
    assert command(p, ["stages/sft.py", "--out", "x"]) == [sys.executable, "stages/sft.py", "--out", "x"]
    launch.main(["sft", "--params", str(ROOT / "params.yaml"), "--dry-run", "--", "stages/sft.py", "--out", "x"])
    assert capsys.readouterr().out.split() == [sys.executable, "stages/sft.py", "--out", "x"]


def test_ddp_with_several_processes_is_torchrun():
    p = plan("grpo", LaunchCfg(processes=2), **machine())
    assert command(p, ["stages/grpo.py"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "stages/grpo.py"
    ]  # fmt: skip
    with pytest.raises(LaunchError, match="3 processes but 2 GPU"):
        plan("grpo", LaunchCfg(processes=3), **machine(cuda_devices=2))


def test_sharded_strategies_use_accelerate_with_the_shipped_config_on_gpus():
    p = plan("dpo", LaunchCfg(processes=4, strategy="fsdp"), **machine(cuda_devices=8))
    assert command(p, ["stages/dpo.py"])[1:7] == [
        "-m", "accelerate.commands.launch", "--config_file", str(SHIPPED / "fsdp.yaml"), "--num_processes", "4"
    ]  # fmt: skip
    p = plan(
        "sft", LaunchCfg(processes=8, strategy="deepspeed_zero3"), **machine(cuda_devices=8, deepspeed_installed=True)
    )
    assert p.config_file == str(SHIPPED / "deepspeed_zero3.yaml")


# -- the traps, each one clear error ------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharding_on_cpu_is_refused_not_silently_ddp(strategy, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", lambda d: d["launch"]["sft"].update(strategy=strategy, processes=2))
    argv = ["sft", "--params", str(params), "--", "stages/sft.py"]
    cwd = os.getcwd()
    os.chdir(ROOT)  # the shipped configs are found relative to the repository, as under dvc
    try:
        with pytest.raises(SystemExit) as exit_:
            run_stage(lambda: launch.main(argv))
    finally:
        os.chdir(cwd)
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without CUDA silently falls back to DDP" in err[0], err


def test_deepspeed_missing_is_named(tmp_path):
    with pytest.raises(LaunchError, match="needs the deepspeed package"):
        plan("sft", LaunchCfg(processes=2, strategy="deepspeed_zero2"), **machine(cuda_devices=2))


def accel_config(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 2, **cfg}))
    return path


def test_accelerate_cpu_flag_which_starts_one_process_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="starts one process whatever num_processes"):
        check_accelerate_config(accel_config(tmp_path, use_cpu=True), "ddp", 2, cuda_devices=0)
    with pytest.raises(LaunchError, match="starts one process"):
        check_accelerate_config(accel_config(tmp_path, distributed_type="MULTI_CPU"), "ddp", 2, cuda_devices=0)


def test_multi_gpu_without_cuda_which_starts_independent_rank0_runs_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="independent rank-0 runs"):
        check_accelerate_config(accel_config(tmp_path), "ddp", 2, cuda_devices=0)


def fake_trainer(world_size: int, fsdp: bool = False, deepspeed: bool = False) -> SimpleNamespace:
    args = SimpleNamespace(world_size=world_size, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    return SimpleNamespace(args=args, is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed)


@pytest.mark.parametrize(
    "launched, planned, trainer, message",
    [
        (2, Plan("sft", "accelerate", "fsdp", 2), fake_trainer(1), "each trainer sees world size 1"),  # rank-0 twins
        (1, Plan("sft", "torchrun", "ddp", 2), fake_trainer(1), "asks for 2 process"),  # --cpu: one process
        (2, Plan("sft", "accelerate", "fsdp", 2), fake_trainer(2), "silent fallback to DDP"),
        (2, Plan("sft", "accelerate", "deepspeed_zero3", 2), fake_trainer(2), "without DeepSpeed"),
        (2, Plan("sft", "python", "none", 1), fake_trainer(2), "start stages through"),  # bare torchrun
    ],
)
def test_the_run_refuses_a_world_it_did_not_ask_for(launched, planned, trainer, message, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(launched))
    monkeypatch.setenv(ENV, planned.to_env())
    run = TrainingRun("sft", {}, [], out=tmp_path / "out", metrics=tmp_path / "m.json")
    with pytest.raises(LaunchError, match=message):
        run.check_launch(trainer)


def test_a_batch_that_cannot_be_split_is_refused():
    from bioreasoner.core import config

    with pytest.raises(BadInputError, match=r"launch\.sft\.processes \(3\) must divide"):
        config.validate(params_data(lambda d: d["launch"]["sft"].update(processes=3)))
    with pytest.raises(BadInputError, match="rounds.v2_1.dpo.per_device_train_batch_size"):
        config.validate(
            params_data(lambda d: (d["launch"]["dpo"].update(processes=2), d["rounds"]["v2_1"]["dpo"].update(
                per_device_train_batch_size=3)))
        )  # fmt: skip
    with pytest.raises(BadInputError, match="unknown key"):
        config.validate(params_data(lambda d: d["launch"]["sft"].update(nprocs=2)))
    # not split: every process takes the section's batch
    config.validate(params_data(lambda d: d["launch"]["sft"].update(processes=3, keep_global_batch=False)))


# -- shipped GPU configs, parsed into trainer arguments without a GPU -----------------------------


def test_shipped_fsdp_config_builds_the_plugin_and_trainer_args(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.qwen2 import modeling_qwen2
    from trl import SFTConfig

    cfg = load_config_from_file(str(SHIPPED / "fsdp.yaml"))  # accelerate's own loader: unknown keys fail
    assert str(cfg.distributed_type) == "DistributedType.FSDP" and cfg.use_cpu is False
    ns = launch_command_parser().parse_args(
        ["--config_file", str(SHIPPED / "fsdp.yaml"), "--num_processes", "8", "x.py"]
    )
    ns, _, _ = _validate_launch_command(ns)
    for key, value in prepare_multi_gpu_env(ns).items():  # what `accelerate launch` hands each process
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
    assert hasattr(modeling_qwen2, "Qwen2DecoderLayer")  # the layer class it wraps exists
    monkeypatch.setenv(ENV, Plan("sft", "accelerate", "fsdp", 8, True, str(SHIPPED / "fsdp.yaml")).to_env())
    sft = load_stage("sft")
    p = stage_params(sft)
    run = TrainingRun("sft", {}, [], out=tmp_path / "o", metrics=tmp_path / "m.json", checkpoints=tmp_path / "c")
    args = SFTConfig(**run.trainer_args(p.sft, seed=p.seed, model=p.model))
    assert args.per_device_train_batch_size * 8 == p.sft.per_device_train_batch_size  # global batch kept


@pytest.mark.parametrize("stage", [2, 3])
def test_shipped_deepspeed_configs_parse_and_say_when_deepspeed_is_missing(stage, tmp_path):
    from importlib.util import find_spec

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from trl import SFTConfig

    cfg = load_config_from_file(str(SHIPPED / f"deepspeed_zero{stage}.yaml"))
    ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
    ds = HfDeepSpeedConfig(str(ds_file))
    assert ds.get_value("zero_optimization.stage") == stage and ds.is_zero3() == (stage == 3)
    autos = {k for k, v in json.loads(ds_file.read_text()).items() if v == "auto"}
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"} <= autos
    if find_spec("deepspeed") is None:  # this machine: no deepspeed, and the launcher says so
        with pytest.raises(LaunchError, match="needs the deepspeed package"):
            plan("sft", LaunchCfg(processes=2, strategy=f"deepspeed_zero{stage}"), **machine(cuda_devices=2))
    else:  # pragma: no cover - a machine with deepspeed fills the "auto" fields from the TRL config
        args = SFTConfig(output_dir=str(tmp_path), deepspeed=str(ds_file), per_device_train_batch_size=2)
        assert args.hf_deepspeed_config.config["train_micro_batch_size_per_gpu"] == 2


# -- sft, dpo and grpo with 2 processes on gloo, against the same run in one -------------------

STAGES = {
    "sft": lambda d: d["sft"].update(
        max_steps=-1, per_device_train_batch_size=2, logging_steps=1, save_steps=100, train_sampling_strategy="random"
    ),
    "dpo": lambda d: d["dpo"].update(
        max_steps=-1, per_device_train_batch_size=2, logging_steps=1, save_steps=100, min_pairs=1, max_length=256
    ),
    "grpo": lambda d: d["grpo"].update(
        max_steps=-1, prompts=4, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
        beta=0.0, logging_steps=1, save_steps=100, rewards={"grounding": {"weight": 1.0, "cap": 3.0}},
        task_types=None,  # the micro tasks are qa
    ),
}  # fmt: skip


def stage_args(stage: str, d: Path, model: Path, tag: str) -> list[str]:
    common = ["--out", f"{tag}/adapter", "--metrics", f"{tag}/metrics.json", "--live-dir", f"{tag}/live"]
    common += ["--checkpoints", f"{tag}/ckpt", "--params", f"{tag}.yaml"]
    if stage == "sft":
        return ["--tasks", "train.jsonl", "--model", str(model), *common]
    if stage == "dpo":
        return ["--round", "v2_0", "--policy", str(model), "--pairs", "pairs.jsonl", *common]
    return ["--policy", str(model), "--tasks", "train.jsonl", "--prompts-out", f"{tag}/prompts.jsonl", *common]


@pytest.fixture(scope="module")
def runs(tiny_base, tmp_path_factory):
    """Each stage run twice on the same micro inputs: in one process (in-process, as `python
    stages/<stage>.py`), and with launch.<stage>.processes 2 through the launcher (torchrun, gloo)."""
    model, tasks = tiny_base
    d = tmp_path_factory.mktemp("launch")
    (d / "train.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    pairs = [
        Pair(
            task_id=t.id, prompt=t.messages, chosen=[Message(role="assistant", content=t.reference)],
            rejected=[Message(role="assistant", content="No. [PMID:9999]")], chosen_score=5.0, rejected_score=1.0,
            score_delta=4.0, rule="test",
        )
        for t in tasks
    ]  # fmt: skip
    (d / "pairs.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    out = {}
    for stage, edit in STAGES.items():
        one, two = f"{stage}1", f"{stage}2"
        write_params(d / f"{one}.yaml", edit)
        write_params(
            d / f"{two}.yaml", lambda p, edit=edit, stage=stage: (edit(p), p["launch"][stage].update(processes=2))
        )
        cwd = os.getcwd()
        os.chdir(d)
        argv = sys.argv
        try:
            sys.argv = [f"{stage}.py", *stage_args(stage, d, model, one)]
            load_stage(stage).main()
        finally:
            sys.argv = argv
            os.chdir(cwd)
        cmd = [sys.executable, "-m", "bioreasoner.training.launch", stage, "--params", f"{two}.yaml", "--"]
        cmd += [str(ROOT / "stages" / f"{stage}.py"), *stage_args(stage, d, model, two)]
        env = {k: v for k, v in os.environ.items() if k not in (ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK")}
        res = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        out[stage] = (d / one, d / two, res.stderr)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_two_processes_train_the_one_process_run(runs, stage):
    one, two, log = runs[stage]
    m1, m2 = (json.loads((p / "metrics.json").read_text()) for p in (one, two))
    # the trainer saw world size 2, through torchrun, on this machine's CPU
    assert m2["launch"]["world_size"] == 2 and m2["launch"]["launcher"] == "torchrun"
    assert m2["launch"]["strategy"] == "ddp" and m2["launch"]["accelerator"] == "cpu"
    assert m1["launch"]["world_size"] == 1 and m1["launch"]["launcher"] == "python"
    # same global batch, so the same number of optimizer steps (epochs, not max_steps, decide it)
    assert m2["launch"]["global_train_batch_size"] == m1["launch"]["global_train_batch_size"]
    assert m2["launch"]["per_device_train_batch_size"] * 2 == m1["launch"]["per_device_train_batch_size"]
    assert m2["global_step"] == m1["global_step"] > 1
    # both ranks ended with the same adapter, and it is the one saved
    digests = dict(re.findall(r"rank (\d) adapter sha256 ([0-9a-f]{64})", log))
    saved = state_digest(load_file(two / "adapter" / "adapter_model.safetensors"))
    assert digests == {"0": saved, "1": saved}
    # only rank 0 wrote outs, metrics and curves
    assert re.findall(r"rank (\d) saved the adapter", log) == ["0"]
    assert re.findall(r"rank (\d) published the curves", log) == ["0"]
    steps = [r.split("\t")[0] for r in (two / "live/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, m1["global_step"] + 1)]  # one writer: no repeated rows
    if stage == "grpo":
        assert (two / "prompts.jsonl").read_text() == (one / "prompts.jsonl").read_text()
