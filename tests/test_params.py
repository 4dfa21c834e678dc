"""Typed params: a table of bad values per section, each refused with one line naming the
key, the rule and (for a typo) the nearest valid key; and a stage run that fails fast."""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError
from tests.conftest import ROOT, run_stage

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted: str, value: Any) -> dict[str, Any]:
    """The committed params with `dotted` set to `value` (a missing last key is added)."""
    data = copy.deepcopy(PARAMS)
    *path, last = dotted.split(".")
    node: Any = data
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return data


def without(dotted: str) -> dict[str, Any]:
    data = copy.deepcopy(PARAMS)
    *path, last = dotted.split(".")
    node: Any = data
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]
    return data


def test_committed_params_are_valid() -> None:
    p = config.validate(PARAMS)
    assert p.sft.per_device_train_batch_size > 0
    assert p.grpo_policy == PARAMS["merge"]["versions"]["v3_0"]["parent"]


# (params, key named in the error, words the problem must contain)
CASES = [
    # typos: refused, with the nearest valid key
    (with_value("sft.learning_rat", 1e-3), "sft.learning_rat", "did you mean 'learning_rate'"),
    (with_value("grpo.betta", 0.05), "grpo.betta", "did you mean 'beta'"),
    (with_value("dpo.lora.alhpa", 8), "dpo.lora.alhpa", "did you mean 'alpha'"),
    (with_value("rounds.v2_0.sampels_per_prompt", 2), "rounds.v2_0.sampels_per_prompt", "did you mean"),
    (with_value("judges.pass_rule.min_scor", 3), "judges.pass_rule.min_scor", "did you mean 'min_score'"),
    (with_value("seeed", 1), "seeed", "did you mean 'seed'"),
    # a renamed required key: missing, named, before any model loads
    (without("sft.learning_rate"), "sft.learning_rate", "required"),
    (without("model"), "model", "required"),
    # wrong types
    (with_value("sft.learning_rate", "fast"), "sft.learning_rate", "valid number"),
    (with_value("sft.per_device_train_batch_size", 8.5), "sft.per_device_train_batch_size", "integer"),
    (with_value("sft.packing", "yes"), "sft.packing", "boolean"),
    (with_value("seed", "42x"), "seed", "integer"),
    # ranges
    (with_value("sft.per_device_train_batch_size", 0), "sft.per_device_train_batch_size", "greater than 0"),
    (with_value("dpo.beta", -0.1), "dpo.beta", "greater than 0"),
    (with_value("eval.generation.temperature", -1), "eval.generation.temperature", "greater than or equal to 0"),
    (with_value("eval.generation.top_p", 1.5), "eval.generation.top_p", "less than or equal to 1"),
    (with_value("cls.pseudo_ratio", 1.2), "cls.pseudo_ratio", "less than 1"),
    (with_value("build_triplets.grouping.max_df_fraction", 2), "build_triplets.grouping.max_df_fraction", "1"),
    (with_value("sft.lora.dropout", 1.0), "sft.lora.dropout", "less than 1"),
    (with_value("sft.max_steps", 0), "sft", "max_steps"),
    (with_value("sft.lr_scheduler_type", "cosin"), "sft.lr_scheduler_type", "cosine"),
    (with_value("judges.pass_rule.min_score", 7), "judges.pass_rule.min_score", "less than or equal to 5"),
    (with_value("judges.max_error_rate", 1.5), "judges.max_error_rate", "less than or equal to 1"),
    # GRPO: groups of two or more that fill the batch
    (with_value("grpo.num_generations", 1), "grpo.num_generations", "greater than or equal to 2"),
    (with_value("grpo.num_generations", 3), "grpo", "multiple of num_generations"),
    (with_value("grpo.temperature", 0), "grpo.temperature", "greater than 0"),
    (with_value("grpo.rewards", {}), "grpo.rewards", "at least one reward"),
    (with_value("grpo.rewards.groundng", {"weight": 1}), "grpo.rewards.groundng", "did you mean 'grounding'"),
    # choices
    (with_value("model.quantization", "8bit"), "model.quantization", "'none' or '4bit'"),
    (with_value("model.dtype", "fp32"), "model.dtype", "float32"),
    (with_value("eval.generation.dtype", "bf16"), "eval.generation.dtype", "bfloat16"),  # torch's names only
    (with_value("eval.generation.workers", 0), "eval.generation.workers", "greater than or equal to 1"),
    (with_value("sft.bf16", "yes"), "sft.bf16", "boolean"),  # TRL's field: true, false or null
    (with_value("grpo.stratify", "decision"), "grpo.stratify", "'none' or 'gold'"),  # the two draws there are
    (with_value("grpo.mask_truncated_completions", 1), "grpo.mask_truncated_completions", "boolean"),  # not a 0/1
    (with_value("model.quantization", "4bit"), "model", "bfloat16"),  # 4bit needs a 16-bit compute dtype
    (with_value("rounds.v2_0.mode", "best"), "rounds.v2_0.mode", "distill"),
    (with_value("harvest.sources.0.kind", "pubmed_csv"), "harvest.sources.0", "pubmedqa"),
    (with_value("harvest.sources.0.pathh", "x"), "harvest.sources.0.pathh", "did you mean 'path'"),
    # the lineage as data: names that exist
    (with_value("rounds.v2_1.policy", "v9_9"), "params", "not a version in merge.versions"),
    (with_value("merge.versions.v2_0.parent", "models/merged/v7"), "params", "nor a merged version"),
    (with_value("rounds.v2_1.samples_per_prompt", 1), "rounds.v2_1", "best_of_n needs samples_per_prompt >= 2"),
    (with_value("rounds.v2_1.dpo", {"beta": -1}), "rounds.v2_1.dpo.beta", "greater than 0"),
    (with_value("rounds.v2_1.dpo", {"lora": {"rr": 8}}), "rounds.v2_1.dpo.lora.rr", "did you mean 'r'"),
    (with_value("base.tiny.num_key_value_heads", 3), "base.tiny", "multiple"),  # 4 heads cannot share 3 KV heads
    (with_value("judges.panel", []), "judges.panel", "at least 1"),
    (with_value("judges.panel", [{"kind": "rubric"}, {"kind": "rubric"}]), "judges", "unique"),
    (
        with_value("judges.panel", [{"kind": "openai", "model": "m", "base_url": "ftp://x"}]),
        "judges.panel.0.base_url",
        "http",
    ),
]


@pytest.mark.parametrize(("data", "where", "words"), CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_bad_params_are_one_clear_line(data: dict[str, Any], where: str, words: str) -> None:
    with pytest.raises(BadInputError) as err:
        config.validate(data)
    msg = str(err.value)
    assert "\n" not in msg
    assert err.value.where == where, msg
    assert words in msg, msg


def test_stage_view_refuses_undeclared_sections(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    p = config.load(path, sections=("seed", "sft"))
    assert p.sft.learning_rate == PARAMS["sft"]["learning_rate"]
    with pytest.raises(AttributeError, match="not declared"):
        _ = p.grpo
    assert set(p.used()) == {"seed", "sft"}


def test_trainer_kwargs_are_trl_fields() -> None:
    """Training sections use TRL's own field names: no key-by-key translation."""
    import dataclasses

    from trl import DPOConfig, GRPOConfig, SFTConfig

    p = config.validate(PARAMS)
    for section, cls in ((p.sft, SFTConfig), (p.dpo, DPOConfig), (p.grpo, GRPOConfig)):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(section.trainer_kwargs()) <= fields, set(section.trainer_kwargs()) - fields


def test_source_kinds_match_the_readers() -> None:
    from bioreasoner.harvest import KINDS

    kinds = {a.__args__[0] for m in config.SourceCfg.__origin__.__args__ for a in [m.model_fields["kind"].annotation]}
    assert kinds == set(KINDS)


def test_malformed_yaml_is_one_line(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\nsft: [unclosed\n")
    with pytest.raises(BadInputError, match="malformed YAML"):
        config.load(path, sections=("seed",))


def test_a_stage_with_a_typo_fails_before_touching_data(project) -> None:
    """`dvc exp run -S grpo.betta=...`-style typos: exit 1, one line, no traceback, no outs."""
    text = (project / "params.yaml").read_text().replace("  max_source_chars:", "  max_source_char:", 1)
    (project / "params.yaml").write_text(text)
    res = run_stage(project, "build_triplets.py", "--corpus", "data/corpus.jsonl", "--out-dir", "data/tasks")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert lines == [
        "error: params.yaml: build_triplets.max_source_char: unknown key (did you mean 'max_source_chars'?)"
    ], res.stderr
    assert "Traceback" not in res.stderr
    assert not (project / "data" / "tasks").exists()
    assert sys.executable  # the stage ran with this environment's python (conftest)
