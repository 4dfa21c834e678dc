"""MeSH grouping: the right partners, deterministic, and near-linear work."""

from __future__ import annotations

import random

from bioreasoner.tasks import grouping
from bioreasoner.tasks.grouping import group_by_mesh

KW = dict(max_df_fraction=0.5, max_df_cap=1000, max_uses=1, seed=0)


def test_anchor_takes_its_two_best_overlapping_partners():
    papers = [
        ("1", ["Asthma", "Child", "Inhaled Steroids"]),
        ("2", ["Asthma", "Inhaled Steroids"]),  # shares two rare terms with 1
        ("3", ["Asthma", "Child"]),  # shares two with 1
        ("4", ["Hip Fracture", "Aged"]),  # shares nothing with 1-3
        ("5", ["Hip Fracture", "Aged", "Osteoporosis"]),
        ("6", ["Osteoporosis", "Aged"]),
    ]
    groups = group_by_mesh(papers, **KW)
    assert {frozenset(g.pmids) for g in groups} == {frozenset("123"), frozenset("456")}
    for g in groups:
        assert g.shared  # every group records what joins it


def test_ubiquitous_terms_do_not_group():
    # "Humans" is on every paper: above max_df it must not link unrelated papers.
    papers = [(str(i), ["Humans", f"Unique {i}"]) for i in range(1, 10)]
    assert group_by_mesh(papers, max_df_fraction=0.5, max_df_cap=1000, max_uses=2, seed=0) == []


def test_same_inputs_and_seed_same_groups():
    rng = random.Random(1)
    papers = [(str(i), rng.sample([f"T{j}" for j in range(40)], 5)) for i in range(1, 300)]
    assert group_by_mesh(papers, **KW) == group_by_mesh(papers, **KW)
    assert group_by_mesh(papers, **KW) != group_by_mesh(papers, **{**KW, "seed": 1})


def test_max_uses_caps_how_often_a_paper_appears():
    rng = random.Random(2)
    papers = [(str(i), rng.sample([f"T{j}" for j in range(30)], 4)) for i in range(1, 200)]
    groups = group_by_mesh(papers, **{**KW, "max_uses": 2})
    counts: dict[str, int] = {}
    for g in groups:
        for p in g.pmids:
            counts[p] = counts.get(p, 0) + 1
    assert max(counts.values()) <= 2
    assert len({frozenset(g.pmids) for g in groups}) == len(groups)  # no triple twice


def zipf_corpus(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """Papers with ~12 MeSH terms drawn from a Zipf-like vocabulary, as real MeSH is."""
    rng = random.Random(seed)
    vocab = [f"Term {i}" for i in range(max(50, n // 2))]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    return [(str(i + 1), sorted(set(rng.choices(vocab, weights, k=12)))) for i in range(n)]


def test_work_grows_near_linearly(monkeypatch):
    """Count posting-list visits: 10x the papers must cost about 10x, not 100x or 1000x."""
    visits = {"n": 0}
    real_dict = grouping.defaultdict

    class CountingScores(dict):
        def __missing__(self, key):
            return 0.0

        def __setitem__(self, key, value):
            visits["n"] += 1
            super().__setitem__(key, value)

    def counting_defaultdict(factory, *a):
        return CountingScores() if factory is float else real_dict(factory, *a)

    monkeypatch.setattr(grouping, "defaultdict", counting_defaultdict)
    cost = {}
    for n in (1500, 15000):
        visits["n"] = 0
        group_by_mesh(zipf_corpus(n, 0), max_df_fraction=0.1, max_df_cap=200, max_uses=2, seed=0)
        cost[n] = visits["n"]
    assert cost[15000] / cost[1500] < 20, cost
