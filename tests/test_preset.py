"""The GPU preset (presets/qwen2.5-7b-qlora.yaml) and its command (scripts/apply_preset.py), on
CPU and without weights: it merges into params.yaml keeping comments and untouched sections,
validates, and every training stage's TRL config, LoRA config, the QLoRA quantization config
and the sampling configuration build from it. A bad preset is one line and no write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.endpoints.completions import ServedSampler
from bioreasoner.modeling.generation import SamplingParams
from bioreasoner.modeling.models import quantization_config
from bioreasoner.tasks.llm_teacher import OpenAITeacher
from bioreasoner.training.lifecycle import lora_config
from tests.conftest import ROOT
from tests.params_edit import tmp_run

PRESET = ROOT / "presets/qwen2.5-7b-qlora.yaml"


def apply(params: Path, preset: Path = PRESET, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/apply_preset.py"), str(preset), "--params", str(params), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    params = tmp_path_factory.mktemp("preset") / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    res = apply(params)
    assert res.returncode == 0, res.stderr
    assert "dvc freeze pretrain" in res.stdout  # models/pretrained is no longer read
    return params


def section(text: str, name: str) -> str:
    """The lines of top-level section `name` (up to the next top-level key)."""
    lines = text.splitlines()
    start = lines.index(next(x for x in lines if x.startswith(f"{name}:")))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1].isalpha()), len(lines))
    return "\n".join(lines[start:end])


def test_the_preset_merges_with_comments_kept(merged):
    before, after = (ROOT / "params.yaml").read_text(), merged.read_text()
    p = config.validate(yaml.safe_load(after), merged)
    preset = yaml.safe_load(PRESET.read_text())
    # every value the preset names is the merged value
    assert (p.model.base, p.model.dtype, p.model.quantization) == ("Qwen/Qwen2.5-7B-Instruct", "bfloat16", "4bit")
    assert (p.sft.learning_rate, p.sft.num_train_epochs, p.sft.lora.r, p.sft.lora.alpha) == (2e-5, 3, 16, 32)
    assert (p.dpo.beta, p.dpo.learning_rate, p.dpo.max_length, p.sft.max_length) == (0.1, 2e-6, 4096, 8192)
    assert [j.name for j in p.judges.panel] == ["lead", "second"] and {j.kind for j in p.judges.panel} == {"openai"}
    assert p.rounds["v2_1"].dpo == {"lora": {"r": 32, "alpha": 64}}  # kept: the preset does not name it
    assert (
        p.rounds["v2_1"].prompts == yaml.safe_load(before)["rounds"]["v2_1"]["prompts"]
        and p.rounds["v2_1"].backend == preset["rounds"]["v2_1"]["backend"]
    )
    # sections the preset does not touch are byte-identical; comments stay, new values carry the preset's
    for name in ("harvest", "split", "base", "pretrain", "report"):
        assert section(after, name) == section(before, name), name
    assert "# Honest deltas (stage `report`)" in after and "# GRPO with grounded-citation rewards [D6]." in after
    assert "learning_rate: 2.0e-5  # [D1]" in after
    assert "# Tiny-model defaults" in after  # a comment above a changed key stays ...
    assert "# CPU default; bfloat16 on GPUs" not in after  # ... an end-of-line reason for the old value does not
    # applying twice changes nothing
    again = apply(merged)
    assert again.returncode == 0 and merged.read_text() == after


def test_every_training_and_sampling_config_builds_without_weights(merged, tmp_path):
    from trl import DPOConfig, GRPOConfig, SFTConfig

    p = config.validate(yaml.safe_load(merged.read_text()), merged)
    run = tmp_run(tmp_path)
    sft = SFTConfig(**run.trainer_args(p.sft, seed=p.seed, model=p.model))
    assert (sft.learning_rate, sft.num_train_epochs, sft.max_length, sft.bf16) == (2e-5, 3, 8192, True)
    assert sft.gradient_checkpointing and sft.gradient_checkpointing_kwargs == {"use_reentrant": False}  # [D9]
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps == 32
    for name in p.rounds:
        dpo = DPOConfig(**run.trainer_args(p.round_dpo(name), seed=p.seed, model=p.model))
        assert (dpo.beta, dpo.learning_rate, dpo.max_length, dpo.num_train_epochs) == (0.1, 2e-6, 4096, 2)
    grpo = GRPOConfig(**run.trainer_args(p.grpo, seed=p.seed, model=p.model), reward_weights=[1.0] * 4)
    assert grpo.use_vllm and grpo.vllm_mode == "colocate" and grpo.bf16
    assert grpo.max_completion_length == 1024 and grpo.gradient_checkpointing
    loras = [p.sft.lora, p.dpo.lora, p.round_dpo("v2_1").lora, p.grpo.lora, p.cls.lora]
    assert [(c.r, c.lora_alpha) for c in map(lora_config, loras)] == [(16, 32), (16, 32), (32, 64), (16, 32), (16, 32)]
    bnb = quantization_config(p.model.quantization, p.model.dtype)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert str(bnb.bnb_4bit_compute_dtype) == "torch.bfloat16"
    # sampling: per round and for eval, the in-process parameters and the request a server would get
    for name, r in p.rounds.items():
        gen = SamplingParams(**r.generation.model_dump(), prefix="<think>\n" if r.force_think else "")
        assert r.backend in ("vllm", "openai") and r.server is not None
        body = ServedSampler(r.server, model=f"models/merged/{r.policy}").body("prompt", 1, gen)
        assert body["model"] == f"models/merged/{r.policy}" and body["max_tokens"] == 1024, name
    gen = SamplingParams(**p.eval.generation.model_dump())
    assert (gen.temperature, gen.max_new_tokens) == (0.7, 1024)
    # the CPU default's bf16 copy and sampling processes are not carried onto a GPU [D18]
    blocks = [p.eval.generation, p.cls.generation, *(r.generation for r in p.rounds.values())]
    assert all((g.dtype, g.workers) == ("auto", 1) for g in blocks)
    assert p.grpo.task_types is None  # a 7B model trains on qa too; the tiny default's exclusion is not carried [D19]
    assert ServedSampler(p.eval.server, model="models/merged/sft").body("p", 2, gen)["seed"] == 2
    # the teacher: an OpenAI-compatible client built from the preset, nothing sent
    teacher = OpenAITeacher(p.teacher, p.seed)
    assert teacher.http.url("chat/completions") == "https://teacher.invalid/v1/chat/completions"
    assert (teacher.http.api_key_env, teacher.cfg.max_attempts, teacher.cfg.on_reject) == (
        "TEACHER_API_KEY",
        3,
        "fallback",
    )
    assert teacher.http.network_requests == 0


def test_a_bad_preset_is_one_line_and_no_write(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    original = params.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  learnin_rate: 2.0e-5\n")
    res = apply(params, bad)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {bad}: sft.learnin_rate: unknown key (did you mean 'learning_rate'?) (after merging into {params})"
    ]
    bad.write_text("grpo:\n  vllm_mode: server\n")  # server mode without use_vllm
    res = apply(params, bad)
    assert res.returncode == 1 and "vllm_mode server needs use_vllm: true" in res.stderr
    assert apply(params, PRESET, "--check").returncode == 0  # --check validates only
    assert params.read_bytes() == original
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".params")] == []  # no temp left
