"""Seeded batched sampling: an item's sample depends on its seed, not on its batch; the
nucleus is the one top-p defines; draws follow the distribution; a forced prefix is part of
the response."""

from __future__ import annotations

import pytest
import torch

from bioreasoner.modeling.generation import PerRowSampler, SamplingParams, item_seed, sample
from bioreasoner.modeling.models import load_model, load_tokenizer

# (probabilities, top_p, expected nucleus floor): the smallest probability kept
NUCLEUS_CASES = [
    ([0.5, 0.3, 0.15, 0.05], 0.7, 0.3),  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    ([0.5, 0.3, 0.15, 0.05], 0.5, 0.5),  # the top token alone reaches 0.5
    ([0.5, 0.3, 0.15, 0.05], 0.95, 0.15),  # 0.95 exactly: 0.05 is not needed
    ([0.05, 0.15, 0.5, 0.3], 0.7, 0.3),  # vocabulary order does not matter
    ([0.9, 0.1, 0.0, 0.0], 0.99, 0.1),
    ([0.25, 0.25, 0.25, 0.25], 0.3, 0.25),  # ties: every tied token is at the floor
]


@pytest.mark.parametrize(("probs", "top_p", "floor"), NUCLEUS_CASES)
def test_nucleus_floor_table(probs, top_p, floor):
    sampler = PerRowSampler([0], temperature=1.0, top_p=top_p, max_new_tokens=1)
    got = sampler._nucleus_floor(torch.tensor([probs]))
    assert got.item() == pytest.approx(floor)


def test_nucleus_floor_fast_path_equals_full_sort():
    torch.manual_seed(0)
    sharp = torch.softmax(torch.randn(3, 5000) * 6, -1)  # nucleus within the top 256: topk path
    flat = torch.softmax(torch.randn(3, 5000) * 0.1, -1)  # nucleus wider than 256: full sort path
    probs = torch.cat([sharp, flat])
    sampler = PerRowSampler([0] * 6, temperature=1.0, top_p=0.9, max_new_tokens=1)
    expected = torch.stack([sampler._floor(p.sort(descending=True).values.unsqueeze(0))[0] for p in probs])
    assert torch.equal(sampler._nucleus_floor(probs).flatten(), expected)


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    n = 3000
    sampler = PerRowSampler(list(range(n)), temperature=1.0, top_p=1.0, max_new_tokens=1)
    out = sampler(torch.zeros(n, 1, dtype=torch.long), probs.log().expand(n, 3).clone())
    picks = out.argmax(-1)
    assert torch.isfinite(out).sum(-1).eq(1).all()  # exactly one token left per row
    freq = torch.bincount(picks, minlength=3) / n
    assert torch.allclose(freq, probs, atol=0.03), freq  # 3000 draws: sd of a share <= 0.009


def test_top_p_never_draws_outside_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 2000
    sampler = PerRowSampler(list(range(n)), temperature=1.0, top_p=0.7, max_new_tokens=1)
    picks = sampler(torch.zeros(n, 1, dtype=torch.long), probs.log().expand(n, 4).clone()).argmax(-1)
    assert set(picks.tolist()) == {0, 1}


def test_item_seed_is_stable_and_distinct():
    assert item_seed(42, "eval", "qa-1") == item_seed(42, "eval", "qa-1")
    assert len({item_seed(42, "eval", f"qa-{i}") for i in range(100)}) == 100
    assert item_seed(42, "x") != item_seed(43, "x")


@pytest.fixture(scope="module")
def tiny(tiny_base):
    model_dir, tasks = tiny_base
    return load_model(model_dir), load_tokenizer(model_dir), tasks


def prompts(tasks):
    return [[m.model_dump() for m in t.messages] for t in tasks]


def test_sample_depends_on_seed_not_batch(tiny):
    model, tok, tasks = tiny
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=4)
    seeds = [item_seed(0, t.id) for t in tasks]
    full = sample(model, tok, prompts(tasks), seeds, params)
    alone = [sample(model, tok, prompts([t]), [s], params)[0] for t, s in zip(tasks, seeds, strict=True)]
    reversed_ = sample(model, tok, prompts(tasks[::-1]), seeds[::-1], params)[::-1]
    assert full == alone == reversed_
    other = sample(model, tok, prompts(tasks), [s + 1 for s in seeds], params)
    assert other != full  # the seed matters


def test_forced_prefix_starts_every_response(tiny):
    model, tok, tasks = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=5, batch_size=3, prefix="<think>\n")
    out = sample(model, tok, prompts(tasks), list(range(len(tasks))), params)
    assert all(o.startswith("<think>\n") for o in out)
    # the model was conditioned on the prefix: the same seeds without it continue differently
    plain = sample(model, tok, prompts(tasks), list(range(len(tasks))), SamplingParams(1.0, 1.0, 5, 3))
    assert [o.removeprefix("<think>\n") for o in out] != plain


def test_temperature_zero_is_greedy(tiny):
    model, tok, tasks = tiny
    params = SamplingParams(temperature=0, max_new_tokens=6, batch_size=6)
    out = sample(model, tok, prompts(tasks[:1]), [1], params)[0]
    ids = tok.apply_chat_template(
        prompts(tasks[:1])[0], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ref = model.generate(**ids, do_sample=False, max_new_tokens=6, temperature=None, top_p=None, top_k=None)
    assert out == tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_decode_equals_generate_on_a_padded_batch_and_stops_each_row_at_its_stop_token(tiny):
    from bioreasoner.modeling.generation import decode, render_prompt, stop_ids

    model, tok, tasks = tiny
    tok.padding_side = "left"
    texts = [render_prompt(tok, p) + " more" * i for i, p in enumerate(prompts(tasks))]  # varied lengths
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc["attention_mask"] == 0).any()  # prompts of different lengths: left padding is exercised
    ours = decode(model, enc["input_ids"], enc["attention_mask"], None, 30)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=30, temperature=None, top_p=None, top_k=None)
    stops = set(stop_ids(model))
    for row, mine in zip(ref[:, enc["input_ids"].shape[1] :].tolist(), ours, strict=True):
        assert row[: len(mine)] == mine  # generate only pads after the stop token
        assert not stops.intersection(mine[:-1])  # nothing is generated after a stop token
        assert len(mine) == 30 or mine[-1] in stops


def test_worker_processes_return_what_one_process_does_in_input_order(tiny):
    """workers: 2 decodes batches in two spawned processes of one thread each; with one thread
    here too, every response is the same string, and `on_batch` sees batches in plan order."""
    model, tok, tasks = tiny
    seeds = [item_seed(3, t.id) for t in tasks]
    one = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10, batch_size=2)
    two = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10, batch_size=2, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the workers get 2 // 2 = 1 thread each
    seen: list[list[int]] = []
    try:
        parallel = sample(model, tok, prompts(tasks), seeds, two, on_batch=lambda idx, _: seen.append(idx))
        torch.set_num_threads(1)
        serial_seen: list[list[int]] = []
        serial = sample(model, tok, prompts(tasks), seeds, one, on_batch=lambda idx, _: serial_seen.append(idx))
    finally:
        torch.set_num_threads(threads)
    assert parallel == serial
    assert seen == serial_seen and len(seen) > 2  # several batches, handed back in the same order


def test_sampling_dtype_uses_a_cast_copy_and_leaves_the_model_alone(tiny):
    from bioreasoner.modeling.generation import sampling_model

    model, tok, tasks = tiny
    assert model.dtype == torch.float32
    assert sampling_model(model, "auto") is model and sampling_model(model, "float32") is model
    seeds = [item_seed(5, t.id) for t in tasks]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, batch_size=3, dtype="bfloat16")
    via_param = sample(model, tok, prompts(tasks), seeds, params)
    assert model.dtype == torch.float32  # the caller's model (e.g. one being trained) is not cast
    cast = sampling_model(model, "bfloat16")
    assert cast is not model and cast.dtype == torch.bfloat16
    direct = sample(cast, tok, prompts(tasks), seeds, SamplingParams(temperature=1.0, max_new_tokens=12, batch_size=3))
    assert via_param == direct
