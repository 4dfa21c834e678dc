"""The one training path (`bioreasoner.training.lifecycle`) and what every training stage gets
from it: byte-stable adapters, whole-run metrics and curves, curves that survive a failed run,
params validated first, and clear errors for inputs that would train nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from transformers import TrainerCallback

from bioreasoner.core.io import BadInputError
from bioreasoner.training.lifecycle import TrainingRun, mean_train_loss, truncate_series
from tests.conftest import ROOT
from tests.params_edit import stage_params, write_params
from tests.tiny import load_stage, make_task

# -- byte-stable adapter folders ----------------------------------------------------------------

SAVE = textwrap.dedent(
    """
    import sys, torch
    from peft import get_peft_model
    from bioreasoner.core.config import LoraCfg
    from bioreasoner.modeling.models import load_model, load_tokenizer
    from bioreasoner.training.lifecycle import TrainingRun, lora_config

    model_dir, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraCfg(r=4, alpha=8, target_modules=modules, modules_to_save=["lm_head", "embed_tokens"])
    model = get_peft_model(load_model(model_dir), lora_config(cfg))
    run = TrainingRun("t", {"seed": 0}, [model_dir], out=out, metrics=out + ".json")
    run.save(model, load_tokenizer(model_dir))
    """
)


@pytest.mark.slow
def test_adapter_folder_is_byte_identical_across_hash_seeds(tiny_base, tmp_path):
    """peft writes target_modules in set order, which follows PYTHONHASHSEED: without sorting,
    every run changed adapter_config.json and so dvc.lock."""
    model_dir, _ = tiny_base
    folders = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"adapter-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", SAVE, str(model_dir), str(out)], env=env, capture_output=True)
        assert res.returncode == 0, res.stderr.decode()[-2000:]
        folders.append(out)
    files = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*") if p.is_file())
    assert {"adapter_config.json", "adapter_model.safetensors", "lineage.json"} <= {str(f) for f in files}
    for f in files:
        first = (folders[0] / f).read_bytes()
        assert all((other / f).read_bytes() == first for other in folders[1:]), f
    cfg = json.loads((folders[0] / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(cfg["target_modules"])
    assert cfg["modules_to_save"] == ["embed_tokens", "lm_head"]


# -- whole-run metrics and curves ---------------------------------------------------------------


def test_mean_train_loss_weights_each_logged_window_by_its_length():
    history = [{"loss": 4.0, "step": 2}, {"loss": 1.0, "step": 3}, {"train_loss": 9.9, "step": 3}]
    assert mean_train_loss(history) == pytest.approx((4.0 * 2 + 1.0) / 3)
    assert mean_train_loss([{"train_runtime": 1.0, "step": 0}]) is None


def test_truncate_series_drops_rows_past_the_checkpoint_and_torn_rows(tmp_path):
    metrics = tmp_path / "plots" / "metrics"
    (metrics / "rewards").mkdir(parents=True)
    (metrics / "loss.tsv").write_text("step\tloss\n1\t5.0\n2\t4.0\n3\t3.0\n4\t2.")
    (metrics / "rewards" / "mean.tsv").write_text("step\tmean\n2\t0.5\n4\t0.7\n")
    assert truncate_series(tmp_path, 2) == 3
    assert (metrics / "loss.tsv").read_text() == "step\tloss\n1\t5.0\n2\t4.0\n"
    assert (metrics / "rewards" / "mean.tsv").read_text() == "step\tmean\n2\t0.5\n"


class Boom(TrainerCallback):
    """Fails the run at a given step, after DVCLive has started logging."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise RuntimeError("boom")


def sft_run(tmp_path, model_dir, tasks, **sft):
    """A TrainingRun and the sft stage's trainer, as `stages/sft.py` makes them."""
    stage = load_stage("sft")
    p = stage_params(stage, lambda d: d["sft"].update(sft))
    run = TrainingRun(
        "sft",
        p.used(),
        [],
        out=tmp_path / "adapter",
        metrics=tmp_path / "sft.json",
        live_dir=tmp_path / "live",
        checkpoints=tmp_path / "ckpt",
    )
    return run, stage.build_trainer(p, tasks, str(model_dir), run)


def test_last_step_is_logged_and_train_loss_covers_the_whole_run(tiny_base, tmp_path):
    model_dir, tasks = tiny_base
    run, trainer = sft_run(
        tmp_path, model_dir, tasks, max_steps=3, logging_steps=2, per_device_train_batch_size=2, save_steps=100
    )
    history = run.train(trainer)
    assert [h["step"] for h in history if "loss" in h] == [2, 3]  # step 3 too, though 3 % 2 != 0
    metrics = run.finish({})
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    assert metrics["train_loss"] == round((2 * losses[2] + losses[3]) / 3, 4)
    assert metrics["global_step"] == 3
    assert history[-1]["train_loss"] == pytest.approx((2 * losses[2] + losses[3]) / 3)
    rows = (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()
    assert rows == ["step\tloss", f"2\t{losses[2]}", f"3\t{losses[3]}"]
    assert not (tmp_path / "live/plots/metrics/train").exists()  # the end-of-run line is summary only
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["train"]["loss"] == pytest.approx(history[-1]["train_loss"])
    # wall-clock values differ on every run: none in the tracked curves (dvc.lock stays stable)
    published = json.dumps(summary) + " ".join(p.name for p in (tmp_path / "live").rglob("*"))
    assert "runtime" not in published and "per_second" not in published and "step_time" not in published
    assert not list((tmp_path / "ckpt").iterdir())


def test_a_failed_run_leaves_the_last_good_curves_and_its_checkpoints(tiny_base, tmp_path):
    model_dir, tasks = tiny_base
    good = tmp_path / "live/plots/metrics/loss.tsv"
    good.parent.mkdir(parents=True)
    good.write_text("step\tloss\n5\t1.0\n")
    (tmp_path / "live/metrics.json").write_text('{"loss": 1.0, "step": 5}')
    run, trainer = sft_run(
        tmp_path, model_dir, tasks, max_steps=4, logging_steps=1, save_steps=2, per_device_train_batch_size=2
    )
    trainer.add_callback(Boom(at=3))
    with pytest.raises(RuntimeError, match="boom"):
        run.train(trainer)
    assert good.read_text() == "step\tloss\n5\t1.0\n"  # DVCLive never wrote into the published folder
    assert json.loads((tmp_path / "live/metrics.json").read_text()) == {"loss": 1.0, "step": 5}
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "sft.json").exists()
    assert list(run.checkpoint.glob("checkpoint-2"))  # kept, for the re-run to resume from


# -- params first, and inputs that would train nothing ------------------------------------------

STAGE_ARGS = {
    "sft": ["--tasks", "missing.jsonl", "--model", "missing"],
    "dpo": ["--round", "v2_0", "--policy", "missing", "--pairs", "missing.jsonl", "--out", "o", "--metrics", "m"]
    + ["--live-dir", "l"],
    "grpo": ["--tasks", "missing.jsonl", "--policy", "missing"],
    "cls_sleep": ["--train", "missing.jsonl", "--parent", "missing", "--grpo", "missing"],
    "merge": ["--version", "t", "--parent", "missing", "--adapter", "missing", "--out", "o"],
}


def run_main(stage: str, tmp_path, monkeypatch, *args: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [f"{stage}.py", *args])
    load_stage(stage).main()


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_params_are_validated_before_anything_else_is_read(stage, tmp_path, monkeypatch):
    write_params(tmp_path / "params.yaml", lambda d: d["model"].update(dtype="float64"))
    with pytest.raises(BadInputError) as err:
        run_main(stage, tmp_path, monkeypatch, "--params", "params.yaml", *STAGE_ARGS[stage])
    assert err.value.path == "params.yaml" and err.value.where == "model.dtype"


def write_tasks(path, tasks) -> str:
    path.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    return path.name


@pytest.mark.parametrize("stage", ["sft", "grpo", "cls_sleep"])
def test_an_empty_train_file_is_one_clear_error(stage, tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("\n")
    flag = "--train" if stage == "cls_sleep" else "--tasks"
    with pytest.raises(BadInputError, match="no train tasks: the file is empty"):
        run_main(stage, tmp_path, monkeypatch, "--params", str(ROOT / "params.yaml"), flag, "train.jsonl")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("stage", ["sft", "grpo", "cls_sleep"])
def test_duplicate_task_ids_are_refused(stage, tmp_path, monkeypatch):
    tasks = [make_task(0), make_task(1), make_task(0)]
    flag = "--train" if stage == "cls_sleep" else "--tasks"
    write_tasks(tmp_path / "train.jsonl", tasks)
    with pytest.raises(BadInputError, match=r"line 3: duplicate task id 'qa-0' \(first on line 1\)"):
        run_main(stage, tmp_path, monkeypatch, "--params", str(ROOT / "params.yaml"), flag, "train.jsonl")


def test_grpo_needs_the_prompts_of_one_generation_batch(tmp_path, monkeypatch):
    # default: 8 completions / 4 per prompt = 2 prompts, from grpo.task_types (not qa)
    write_tasks(tmp_path / "train.jsonl", [make_task(0, "gap_analysis"), make_task(1), make_task(2)])
    with pytest.raises(BadInputError, match="1 prompt.*one GRPO step samples 2 distinct prompts"):
        run_main("grpo", tmp_path, monkeypatch, "--params", str(ROOT / "params.yaml"), "--tasks", "train.jsonl")


def test_grpo_draws_only_its_task_types_and_says_which_when_too_few(tmp_path, monkeypatch):
    write_tasks(tmp_path / "train.jsonl", [make_task(i) for i in range(6)])  # qa only
    with pytest.raises(BadInputError, match=r"0 prompt\(s\) \(grpo.task_types: \['critique_extend'"):
        run_main("grpo", tmp_path, monkeypatch, "--params", str(ROOT / "params.yaml"), "--tasks", "train.jsonl")
    assert not (tmp_path / "models").exists()


def test_cls_sleep_refuses_grpo_prompts_that_are_not_train_tasks(tmp_path, monkeypatch):
    write_tasks(tmp_path / "train.jsonl", [make_task(0), make_task(1)])
    write_tasks(tmp_path / "test.jsonl", [make_task(5)])
    (tmp_path / "prompts.jsonl").write_text('{"task_id": "qa-1"}\n{"task_id": "qa-9"}\n')
    args = ["--train", "train.jsonl", "--test", "test.jsonl", "--grpo-prompts", "prompts.jsonl"]
    with pytest.raises(BadInputError, match="line 2: task id 'qa-9' is not a train task"):
        run_main("cls_sleep", tmp_path, monkeypatch, "--params", str(ROOT / "params.yaml"), *args)


@pytest.mark.slow
def test_the_stage_prints_one_line_and_exits_1(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    res = subprocess.run(
        [sys.executable, str(ROOT / "stages/sft.py"), "--params", str(ROOT / "params.yaml")]
        + ["--tasks", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "adapter")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'train.jsonl'}: no train tasks: the file is empty, there is nothing to train on"
    )
    assert "Traceback" not in res.stderr and not (tmp_path / "adapter").exists()

    # -- rounds as data, downstream of the rounds -----------------------------------------------------
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["cls_sleep"]
    assert "v2_" not in json.dumps(stage) and "grpo.prompts" not in stage["params"]
