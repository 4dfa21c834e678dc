"""GRPO: on a task built so the policy can learn it, the grounding reward rises; the stage's
trainer carries the registry's reward names, so DVCLive gets one curve per term."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from tests.tiny import ARCH, load_stage, make_task

GOOD, BAD, FILLER = "[PMID:1000]", "[PMID:4242]", " so"


@pytest.fixture(scope="module")
def citing_policy(tmp_path_factory, tiny_base):
    """The tiny model with two single-token citations: the task's source and an invented one.
    Sampling is restricted to {good, bad, filler, eos}, so a random policy finds both citations
    often and GRPO has a signal to learn from."""
    from transformers import AutoTokenizer

    from bioreasoner.modeling.tiny_model import build_model

    model_dir, _ = tiny_base
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_tokens([GOOD, BAD])
    out = tmp_path_factory.mktemp("citing")
    build_model(tok, ARCH, seed=1).save_pretrained(out)
    tok.save_pretrained(out)
    keep = {tok.convert_tokens_to_ids(GOOD), tok.convert_tokens_to_ids(BAD), tok.convert_tokens_to_ids(tok.eos_token)}
    keep |= set(tok(FILLER, add_special_tokens=False)["input_ids"])
    suppress = [i for i in range(len(tok)) if i not in keep]
    return out, suppress


def micro_params(suppress: list[int]) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grpo"].update(
        max_steps=30,
        batch_size=8,
        num_generations=4,
        max_completion_length=4,
        learning_rate=0.05,
        beta=0.0,
        temperature=1.0,
        logging_steps=1,
        save_steps=1000,
        rewards={"grounding": {"weight": 1.0, "cap": 3.0}},
        generation_kwargs={"suppress_tokens": suppress},
    )
    params["grpo"]["lora"]["modules_to_save"] = ["lm_head"]  # let the head move fast in 30 steps
    return params


@pytest.mark.slow
def test_grounding_reward_rises_on_a_learnable_task(citing_policy, tmp_path):
    policy, suppress = citing_policy
    tasks = [make_task(0), make_task(0).model_copy(update={"id": "qa-0b"})]  # source PMID 1000 in both
    trainer = load_stage("grpo").build_trainer(micro_params(suppress), tasks, str(policy), str(tmp_path / "ckpt"))
    assert trainer.reward_func_names == ["grounding"]
    trainer.train()
    curve = [h["rewards/grounding/mean"] for h in trainer.state.log_history if "rewards/grounding/mean" in h]
    assert len(curve) == 30
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    print("grounding curve", [round(c, 2) for c in curve])
    assert last > first + 0.3, curve  # the policy learns to cite its source and not the invented PMID
