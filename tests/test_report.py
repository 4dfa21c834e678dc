"""The report stage: interval and test statistics against answers worked out by hand, the lineage's
point estimates against `eval_metrics.aggregate`, paired deltas on hand-made rows, figures that
render offline to identical bytes, and the stage end to end in a temp project."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError
from bioreasoner.reporting import lineage as lin
from bioreasoner.reporting import plots, stats
from bioreasoner.scoring.eval_metrics import aggregate, macro_f1
from tests.conftest import copy_project, run_stage

Z = 1.96

# ----------------------------------------------------------------------------- stats: Wilson


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        # k = 0: lo is exactly 0, hi = z^2 / (n + z^2) = 3.8416 / 13.8416
        (0, 10, (0.0, 0.277540)),
        # p = 1/2: centre 0.5, half-width z * sqrt(n p q + z^2 / 4) / (n + z^2) = 1.96 * 1.860215 / 13.8416
        (5, 10, (0.236590, 0.763410)),
        # k = n: the mirror of k = 0, hi exactly 1
        (10, 10, (0.722460, 1.0)),
        # one trial, one success: centre (1 + 1.9208) / 4.8416 = 0.603272, half 0.404825 * 0.98 = 0.396728
        (1, 1, (0.206544, 1.0)),
    ],
)
def test_wilson_known_answers(k, n, expected):
    lo, hi = stats.wilson(k, n, Z)
    assert (lo, hi) == pytest.approx(expected, abs=1e-6)


def test_wilson_is_symmetric_and_refuses_impossible_counts():
    lo, hi = stats.wilson(3, 10)
    assert stats.wilson(7, 10) == pytest.approx((1 - hi, 1 - lo))  # k and n - k mirror each other
    for k, n in ((0, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            stats.wilson(k, n)


# ----------------------------------------------------------------------------- stats: McNemar


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        # no discordant pair: no evidence either way
        (0, 0, 1.0),
        # 5 flips, all one way: 2 * 0.5^5
        (0, 5, 0.0625),
        (5, 0, 0.0625),  # the test is symmetric in b and c
        # 3 vs 3: 2 * (1 + 6 + 15 + 20) / 64 = 1.3125, capped at 1
        (3, 3, 1.0),
        # one flip cannot be significant: 2 * 0.5
        (1, 0, 1.0),
        # 10 flips one way: 2 / 1024
        (0, 10, 2 / 1024),
        # 2 vs 8: 2 * (1 + 10 + 45) / 1024
        (2, 8, 0.109375),
    ],
)
def test_mcnemar_known_answers(b, c, expected):
    assert stats.mcnemar(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_log_space_agrees_with_exact_integers(monkeypatch):
    exact = [stats.mcnemar(b, c) for b, c in ((40, 60), (10, 190), (100, 100), (0, 300))]
    monkeypatch.setattr(stats, "EXACT_MCNEMAR_MAX", 0)  # every n takes the log-space path
    logged = [stats.mcnemar(b, c) for b, c in ((40, 60), (10, 190), (100, 100), (0, 300))]
    assert logged == pytest.approx(exact, rel=1e-9)
    assert stats.mcnemar(0, 2000) == 2 * 0.5**2000  # underflows to 0.0, no OverflowError
    with pytest.raises(ValueError):
        stats.mcnemar(-1, 3)


# ----------------------------------------------------------------------------- stats: bootstrap


def mean(a) -> float:
    return float(np.mean(a))


def test_bootstrap_on_constant_data_has_zero_width():
    lo, hi = stats.bootstrap_ci(np.full(30, 0.7), mean, n_boot=200, seed=1)
    assert lo == hi == pytest.approx(0.7)  # every resample is the same 30 values


def test_bootstrap_known_answer_on_two_rows():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% points are 0 and 1
    assert stats.bootstrap_ci(np.array([0.0, 1.0]), mean, n_boot=1000, seed=3) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_takes_plain_sequences():
    data = np.random.default_rng(0).normal(size=50)
    a = stats.bootstrap_ci(data, mean, n_boot=300, seed=7)
    assert a == stats.bootstrap_ci(data, mean, n_boot=300, seed=7)
    assert a != stats.bootstrap_ci(data, mean, n_boot=300, seed=8)
    assert a[0] < data.mean() < a[1]
    # a list of dicts, resampled into lists: the same indices as the array
    rows = [{"x": float(x)} for x in data]
    assert stats.bootstrap_ci(rows, lambda rs: mean([r["x"] for r in rs]), n_boot=300, seed=7) == pytest.approx(a)


def test_bootstrap_of_an_undefined_statistic_is_nan():
    lo, hi = stats.bootstrap_ci(np.zeros(5), lambda a: None, n_boot=50, seed=0)
    assert math.isnan(lo) and math.isnan(hi)


def test_paired_bootstrap_known_answers():
    ones, zeros = np.ones(50), np.zeros(50)
    # the same rows on both sides: no difference in any resample, p = 1
    assert stats.paired_bootstrap(ones, ones, mean, n_boot=200, seed=0) == (0.0, 0.0, 0.0, 1.0)
    # every task went 1 -> 0: every resample's difference is -1, none on the other side of 0
    assert stats.paired_bootstrap(ones, zeros, mean, n_boot=200, seed=0) == (-1.0, -1.0, -1.0, 0.0)
    # seeded: the same call gives the same answer
    a = np.random.default_rng(1).integers(0, 2, 80).astype(float)
    b = np.random.default_rng(2).integers(0, 2, 80).astype(float)
    first = stats.paired_bootstrap(a, b, mean, n_boot=300, seed=5)
    assert first == stats.paired_bootstrap(a, b, mean, n_boot=300, seed=5)
    diff, lo, hi, p = first
    assert diff == pytest.approx(b.mean() - a.mean()) and lo <= diff <= hi and 0 <= p <= 1
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, b[:-1], mean, n_boot=10, seed=0)


def test_paired_bootstrap_pairs_the_tasks():
    """Hard and easy tasks shared by both versions: pairing cancels the task spread, so a constant
    +0.1 per task has a zero-width interval; unpaired it would be wide."""
    parent = np.linspace(0.0, 0.8, 40)
    child = parent + 0.1
    diff, lo, hi, p = stats.paired_bootstrap(parent, child, mean, n_boot=300, seed=0)
    assert (diff, lo, hi, p) == pytest.approx((0.1, 0.1, 0.1, 0.0))


# ----------------------------------------------------------------------------- lineage: rows

SOURCES = {"1", "2", "3"}


def row(task_id: str, **kw: Any) -> dict[str, Any]:
    """An eval row as `score_response` writes it; grounded/hallucinated follow from `cited`."""
    cited = list(kw.pop("cited", []))
    r = {
        "task_id": task_id,
        "type": "gap_analysis",
        "source_pmids": sorted(SOURCES),
        "response": "...",
        "cited_pmids": cited,
        "grounded": [c for c in cited if c in SOURCES],
        "hallucinated": [c for c in cited if c not in SOURCES],
        "fabricated": [c for c in cited if int(c) > 100],
        "has_think": True,
        "think_closed": True,
        "think_chars": 250,
        "judge": "rubric",
        "logic": 3.0,
        "novelty": 2.0,
        "judge_error": None,
        "passed": False,
        "reasons": ["score"],
    }
    r.update(kw)
    if r["type"] == "qa":
        r.setdefault("gold", "yes")
        r.setdefault("decision", r["gold"])
        r.setdefault("pmid", "1")
    return r


def varied_rows(seed: int, n: int = 120) -> list[dict[str, Any]]:
    """Rows exercising every denominator: qa with and without gold or decision, judge errors,
    responses citing nothing, grounded, invented and fabricated PMIDs."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        cited = rnd.sample(["1", "2", "3", "50", "999"], rnd.randint(0, 3))
        kw: dict[str, Any] = {
            "cited": cited,
            "think_closed": rnd.random() < 0.6,
            "think_chars": rnd.randint(0, 900),
            "passed": rnd.random() < 0.2,
        }
        if rnd.random() < 0.1:
            kw.update(logic=None, novelty=None, judge_error="HTTP 500")
        else:
            kw.update(logic=rnd.choice([1.0, 2.5, 4.0]), novelty=rnd.choice([1.0, 3.5]))
        if i % 3 == 0:
            kw.update(
                type="qa", gold=rnd.choice(["yes", "no", "maybe", None]), decision=rnd.choice(["yes", "no", None])
            )
        out.append(row(f"t{i}", **kw))
    return out


def test_every_rate_ratio_and_mean_of_aggregate_is_reported():
    agg = aggregate(varied_rows(0))
    baselines = {"n", "n_by_type", "pubmedqa_n", "pubmedqa_majority_label"}
    baselines |= {k for k in agg if k.startswith("pubmedqa_majority_")}  # no sampling noise: not estimates
    assert {m.name for m in lin.METRICS} == set(agg) - baselines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimates_equal_aggregate(seed):
    rows = varied_rows(seed)
    agg = aggregate(rows)
    got = lin.version_metrics(rows, n_boot=100, seed=0, alpha=0.05, version="v")
    for m in lin.METRICS:
        assert got[m.name]["value"] == agg[m.name], m.name
        cell = got[m.name]
        assert cell["lo"] <= cell["value"] <= cell["hi"], m.name
    qa = [r for r in rows if r["type"] == "qa" and r["gold"] is not None]
    assert got["pubmedqa_accuracy"]["n"] == got["pubmedqa_macro_f1"]["n"] == len(qa)
    assert got["mean_logic"]["n"] == sum(r["logic"] is not None for r in rows)
    assert got["citation_precision"]["n"] == sum(bool(r["cited_pmids"]) for r in rows)
    assert got["hallucination_rate"]["n"] == len(rows)


def test_a_drifted_definition_is_caught(monkeypatch):
    drifted = lin.Metric("hallucination_rate", "rate", lin._all, lambda r: bool(r["fabricated"]))
    monkeypatch.setattr(lin, "METRICS", (drifted,))
    with pytest.raises(RuntimeError, match="drifted"):
        lin.version_metrics(varied_rows(0), n_boot=10, seed=0, alpha=0.05, version="v")


def test_intervals_on_hand_made_rows():
    rows = [row(f"t{i}", cited=["50"] if i < 5 else ["1"]) for i in range(10)]  # 5 of 10 hallucinate
    got = lin.version_metrics(rows, n_boot=200, seed=0, alpha=0.05, version="v")
    # Wilson at z = 1.959964 (alpha 0.05): the table above to 4 decimals
    assert got["hallucination_rate"] == {"value": 0.5, "lo": 0.2366, "hi": 0.7634, "n": 10}
    assert got["citing_rate"] == {"value": 1.0, "lo": 0.7225, "hi": 1.0, "n": 10}
    # every response has think_chars 250 and the same scores: bootstrap intervals of zero width
    assert got["mean_think_chars"] == {"value": 250.0, "lo": 250.0, "hi": 250.0, "n": 10}
    assert got["mean_logic"] == {"value": 3.0, "lo": 3.0, "hi": 3.0, "n": 10}
    # no qa rows: the PubMedQA metrics are undefined, as in aggregate
    assert got["pubmedqa_macro_f1"] == {"value": None, "lo": None, "hi": None, "n": 0}


@pytest.mark.parametrize(
    ("eval_models", "merge_parents", "expected"),
    [
        # the default lineage: base has no parent, each merged version its merge parent
        (
            {"base": "models/base", "sft": "models/merged/sft", "v2_0": "models/merged/v2_0"},
            {"sft": "models/base", "v2_0": "models/merged/sft"},
            {"base": None, "sft": "base", "v2_0": "sft"},
        ),
        # the parent was not evaluated: nothing to compare with
        (
            {"sft": "models/merged/sft", "v2_0": "models/merged/v2_0"},
            {"sft": "models/base", "v2_0": "models/merged/sft"},
            {"sft": None, "v2_0": "sft"},
        ),
        # a user's own folder under a version name is not that merged version: no parent
        (
            {"base": "models/base", "sft": "/data/other"},
            {"sft": "models/base"},
            {"base": None, "sft": None},
        ),
    ],
)
def test_parents(eval_models, merge_parents, expected):
    assert lin.parents(eval_models, merge_parents) == expected


def test_all_hallucinating_parent_against_clean_child_is_significant():
    parent = [row(f"t{i}", cited=["50"]) for i in range(50)]
    child = [row(f"t{i}", cited=["1"]) for i in range(50)]
    d = lin.delta_metrics(parent, child, n_boot=200, seed=0, alpha=0.05, version="c")
    # 50 discordant tasks, all 1 -> 0: McNemar p = 2 * 0.5^50
    assert d["hallucination_rate"] == {
        "diff": -1.0,
        "lo": -1.0,
        "hi": -1.0,
        "p": float(f"{2 * 0.5**50:.3g}"),
        "significant": True,
        "n_pairs": 50,
    }
    # grounded / cited went from 0/50 to 50/50 on every resample
    assert d["citation_precision"]["diff"] == 1.0 and d["citation_precision"]["significant"]
    # nothing else moved
    assert d["citing_rate"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0, "significant": False, "n_pairs": 50}
    assert d["mean_think_chars"]["p"] == 1.0 and not d["mean_think_chars"]["significant"]


def test_identical_versions_have_no_delta():
    rows = varied_rows(4)
    d = lin.delta_metrics(rows, rows, n_boot=200, seed=0, alpha=0.05, version="same")
    for m in lin.METRICS:
        assert d[m.name]["diff"] == 0.0 and d[m.name]["p"] == 1.0 and not d[m.name]["significant"], m.name


def test_deltas_pair_by_task_id_and_respect_denominators():
    parent = [row(f"t{i}", cited=["50"]) for i in range(20)] + [row("only-parent")]
    child = [row("only-child")] + [row(f"t{i}", cited=["1"]) for i in reversed(range(20))]
    child[1]["logic"] = child[1]["novelty"] = None  # judge failed on t19 in the child
    d = lin.delta_metrics(parent, child, n_boot=100, seed=0, alpha=0.05, version="c")
    assert d["hallucination_rate"]["n_pairs"] == 20  # the shared tasks, whatever their order
    assert d["mean_logic"]["n_pairs"] == 19  # tasks the judge scored in both versions
    assert d["pubmedqa_accuracy"] == {
        "diff": None,
        "lo": None,
        "hi": None,
        "p": None,
        "significant": False,
        "n_pairs": 0,
    }


def test_too_few_pairs_give_a_difference_but_no_bootstrap_claim():
    """Three tasks: every resample of one pair is that pair, so a bootstrap would claim certainty.
    Below MIN_BOOTSTRAP_N the difference is shown without an interval and is never significant."""
    parent = [
        row(f"q{i}", type="qa", gold=g, decision="yes", cited=["50"]) for i, g in enumerate(["yes", "no", "maybe"])
    ]
    child = [row(f"q{i}", type="qa", gold=g, decision=g, cited=["1"]) for i, g in enumerate(["yes", "no", "maybe"])]
    d = lin.delta_metrics(parent, child, n_boot=100, seed=0, alpha=0.05, version="c")
    f1 = round(
        macro_f1(["yes", "no", "maybe"], ["yes", "no", "maybe"]) - macro_f1(["yes", "no", "maybe"], ["yes"] * 3), 4
    )
    assert d["pubmedqa_macro_f1"] == {"diff": f1, "lo": None, "hi": None, "p": None, "significant": False, "n_pairs": 3}
    # a rate keeps McNemar's p (3 flips one way: 2 * 0.5^3), but without an interval it is not significant
    assert d["hallucination_rate"] == {
        "diff": -1.0,
        "lo": None,
        "hi": None,
        "p": 0.25,
        "significant": False,
        "n_pairs": 3,
    }
    v = lin.version_metrics(child, n_boot=100, seed=0, alpha=0.05, version="c")
    assert v["mean_logic"] == {"value": 3.0, "lo": None, "hi": None, "n": 3}
    assert v["hallucination_rate"]["hi"] == 0.5615  # Wilson needs no floor: 0 of 3 -> z^2 / (3 + z^2)


def test_macro_f1_delta_is_eval_metrics_own():
    parent = [row(f"q{i}", type="qa", gold=g, decision="yes") for i, g in enumerate(["yes", "no", "maybe"] * 10)]
    child = [row(f"q{i}", type="qa", gold=g, decision=g) for i, g in enumerate(["yes", "no", "maybe"] * 10)]
    d = lin.delta_metrics(parent, child, n_boot=100, seed=0, alpha=0.05, version="c")
    gold = ["yes", "no", "maybe"] * 10
    assert d["pubmedqa_macro_f1"]["diff"] == round(macro_f1(gold, gold) - macro_f1(gold, ["yes"] * 30), 4)
    assert d["pubmedqa_accuracy"]["diff"] == round(2 / 3, 4) and d["pubmedqa_accuracy"]["significant"]


def test_lineage_reports_every_version_and_deltas_to_evaluated_parents():
    rows = {"base": varied_rows(0), "sft": varied_rows(1), "v2_0": varied_rows(2)}
    out = lin.lineage(rows, {"base": None, "sft": "base", "v2_0": "sft"}, n_boot=50, seed=1, alpha=0.05)
    assert list(out["versions"]) == ["base", "sft", "v2_0"]
    assert {v: d["parent"] for v, d in out["deltas"].items()} == {"sft": "base", "v2_0": "sft"}
    assert out == lin.lineage(rows, {"base": None, "sft": "base", "v2_0": "sft"}, n_boot=50, seed=1, alpha=0.05)


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("report", "where"),
    [
        ({"n_boot": 10}, "report.n_boot"),  # too few resamples for a 2.5% tail
        ({"alpha": 0.7}, "report.alpha"),  # not a two-sided level
        ({"n_boots": 1000}, "report.n_boots"),  # a typo is an unknown key
    ],
)
def test_bad_report_params_are_refused(report, where):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    data["report"] = report
    with pytest.raises(BadInputError) as err:
        config.validate(data)
    assert err.value.where == where


def test_report_section_defaults_when_absent():
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert config.validate(data).report == config.ReportCfg(n_boot=1000, alpha=0.05)
    del data["report"]
    assert config.validate(data).report == config.ReportCfg()


# ----------------------------------------------------------------------------- plots


def write_live(root: Path) -> Path:
    """A DVCLive tree like the pipeline's: sft, two rounds, grpo with nested series."""

    def tsv(path: Path, name: str, values: list[float], timestamp: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        head = ["timestamp", "step", name] if timestamp else ["step", name]
        lines = ["\t".join(head)]
        for i, v in enumerate(values):
            lines.append("\t".join(([str(1700000000 + i)] if timestamp else []) + [str(i), str(v)]))
        path.write_text("\n".join(lines) + "\n")

    tsv(root / "sft/plots/metrics/loss.tsv", "loss", [4.0, 3.1, 2.5, 2.2])
    tsv(root / "sft/plots/metrics/learning_rate.tsv", "learning_rate", [0.005, 0.004, 0.002], timestamp=True)
    tsv(root / "sft/plots/metrics/train/runtime.tsv", "runtime", [99.0])  # one step: a summary, not drawn
    for r in ("v2_0", "v2_1"):
        tsv(root / f"rounds/{r}/plots/metrics/rewards/margins.tsv", "margins", [0.0, 0.2, 0.5])
    tsv(root / "grpo/plots/metrics/rewards/grounding/mean.tsv", "mean", [-3.0, -2.0, -1.5])
    tsv(root / "grpo/plots/metrics/kl.tsv", "kl", [0.0, 0.001, 0.004])
    (root / "sft/metrics.json").write_text("{}")
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use raises: the figures must not need the network."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_figures_render_offline_to_identical_bytes(tmp_path, no_network):
    with pytest.raises(OSError):
        socket.create_connection(("example.org", 80))  # the guard is on
    live = write_live(tmp_path / "dvclive")
    rows = {"base": varied_rows(0), "sft": varied_rows(1)}
    data = lin.lineage(rows, {"base": None, "sft": "base"}, n_boot=50, seed=0, alpha=0.05)
    first = plots.render_all(data, [live], tmp_path / "a")
    second = plots.render_all(data, [live], tmp_path / "b")
    names = sorted(p.name for p in first)
    assert names == [
        "curves_grpo.svg",
        "curves_rounds_v2_0.svg",
        "curves_rounds_v2_1.svg",
        "curves_sft.svg",
        "lineage.svg",
    ]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        text = a.read_text()
        assert text.startswith("<?xml") and "<svg" in text
        assert "<dc:date>" not in text and str(tmp_path) not in text  # no timestamp, no local path
    sft = (tmp_path / "a" / "curves_sft.svg").read_text()
    assert "dvclive/sft" in sft  # the title (glyphs are paths; matplotlib keeps each text in a comment)
    assert "runtime" not in sft  # one-step summaries are left out


def test_read_series_and_find_runs(tmp_path):
    live = write_live(tmp_path / "dvclive")
    assert plots.read_series(live / "sft/plots/metrics/learning_rate.tsv") == ([0.0, 1.0, 2.0], [0.005, 0.004, 0.002])
    runs = plots.find_runs([live])
    assert {k: v[1] for k, v in runs.items()} == {
        "grpo": "dvclive/grpo",
        "rounds_v2_0": "dvclive/rounds/v2_0",
        "rounds_v2_1": "dvclive/rounds/v2_1",
        "sft": "dvclive/sft",
    }
    assert list(plots.find_runs([live / "sft"])) == ["sft"]  # a run given directly
    assert plots.find_runs([tmp_path / "missing"]) == {}
    bad = live / "sft/plots/metrics/loss.tsv"
    bad.write_text("step\tloss\n0\t1.0\n1\tnan-ish\n")
    with pytest.raises(BadInputError, match=r"loss.tsv: line 3: not a step and a number"):
        plots.read_series(bad)
    bad.write_text("loss\n1.0\n")
    with pytest.raises(BadInputError, match="no header with a `step` column"):
        plots.read_series(bad)


# ----------------------------------------------------------------------------- the stage

VERSIONS = ("base", "sft", "v2_0", "v2_1", "v3_0")


def stage_rows(version: str) -> list[dict[str, Any]]:
    """30 cross-paper tasks and 12 qa tasks. base cites nothing and has no think block; sft and
    later cite an invented PMID on every task (a significant change from base); v3_0 cites the
    sources (a significant change from v2_1)."""
    rnd = random.Random(version)
    cited = {"base": [], "v3_0": ["1", "2"]}.get(version, ["50"])
    out = []
    for i in range(42):
        kw: dict[str, Any] = {"cited": cited, "think_closed": version != "base", "think_chars": rnd.randint(0, 600)}
        if i >= 30:
            kw.update(type="qa", gold=["yes", "no", "maybe"][i % 3], decision=rnd.choice(["yes", "no", "maybe", None]))
        out.append(row(f"task{i}", **kw))
    return out


@pytest.fixture
def report_project(tmp_path: Path) -> Path:
    proj = copy_project(tmp_path / "proj")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["report"]["n_boot"] = 200  # seconds, not tens of seconds
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for v in VERSIONS:
        path = proj / "data" / "eval" / f"{v}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in stage_rows(v)))
    write_live(proj / "dvclive")
    return proj


@pytest.fixture
def offline_subprocesses(tmp_path: Path, monkeypatch) -> None:
    """Child Pythons start with sockets disabled (a sitecustomize on PYTHONPATH)."""
    guard = tmp_path / "offline"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n"
        "    raise OSError('network access attempted')\n"
        "class _NoSocket(socket.socket):\n"
        "    def __init__(self, *a, **k):\n"
        "        _refuse()\n"
        "socket.socket = _NoSocket\n"
        "socket.create_connection = _refuse\n"
        "socket.getaddrinfo = _refuse\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(guard), os.environ.get("PYTHONPATH")) if p))
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.getaddrinfo('example.org', 80)"], capture_output=True, text=True
    )
    assert probe.returncode != 0 and "network access attempted" in probe.stderr


ARGS = (
    "--eval-dir",
    "data/eval",
    "--live-dirs",
    "dvclive",
    "--metrics",
    "metrics/lineage.json",
    "--out-dir",
    "reports",
)


def test_stage_end_to_end_offline_and_reproducible(report_project, offline_subprocesses):
    proj = report_project
    from bioreasoner.training.lifecycle import TrainingRun

    # how the sft run was launched, as its TrainingRun records it (a single process here)
    TrainingRun("sft", {}, [], out=proj / "a", metrics=proj / "metrics/sft.json").finish({"train_tasks": 1})
    res = run_stage(proj, "report.py", *ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((proj / "metrics/lineage.json").read_text())
    sft_launch = data["training"]["metrics/sft.json"]
    assert (sft_launch["launcher"], sft_launch["world_size"], sft_launch["accelerator"]) == ("python", 1, "cpu")
    assert sft_launch["device"]  # the CPU model on this machine, the GPU's name on CUDA
    assert list(data["versions"]) == list(VERSIONS)
    assert {v: d["parent"] for v, d in data["deltas"].items()} == {
        "sft": "base",
        "v2_0": "sft",
        "v2_1": "v2_0",
        "v3_0": "v2_1",
    }
    for v in VERSIONS:  # the values are metrics/eval/V.json's
        agg = aggregate(stage_rows(v))
        assert {m: c["value"] for m, c in data["versions"][v].items()} == {m.name: agg[m.name] for m in lin.METRICS}
    assert data["deltas"]["sft"]["hallucination_rate"]["significant"]  # 0 -> 42 of 42
    assert data["deltas"]["sft"]["missing_think_rate"]["diff"] == -1.0
    assert data["deltas"]["v2_0"]["hallucination_rate"] == {
        "diff": 0.0,
        "lo": 0.0,
        "hi": 0.0,
        "p": 1.0,
        "significant": False,
        "n_pairs": 42,
    }
    assert data["deltas"]["v3_0"]["citation_precision"]["diff"] == 1.0
    assert data["deltas"]["v3_0"]["citation_precision"]["significant"]
    svgs = sorted(p.name for p in (proj / "reports").iterdir())
    assert svgs == [
        "curves_grpo.svg",
        "curves_rounds_v2_0.svg",
        "curves_rounds_v2_1.svg",
        "curves_sft.svg",
        "lineage.svg",
    ]
    first = {p.name: p.read_bytes() for p in [proj / "metrics/lineage.json", *(proj / "reports").iterdir()]}
    res = run_stage(proj, "report.py", *ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    again = {p.name: p.read_bytes() for p in [proj / "metrics/lineage.json", *(proj / "reports").iterdir()]}
    assert again == first  # seeded bootstrap, deterministic SVGs


def test_a_missing_version_is_one_error_line(report_project):
    proj = report_project
    (proj / "data/eval/v2_1.jsonl").unlink()
    res = run_stage(proj, "report.py", *ARGS)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: data/eval/v2_1.jsonl: no eval rows for version 'v2_1'")
    assert not (proj / "metrics/lineage.json").exists() and not (proj / "reports").exists()


def test_a_malformed_row_is_one_error_line(report_project):
    proj = report_project
    rows = stage_rows("sft")
    del rows[3]["passed"]
    (proj / "data/eval/sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_stage(proj, "report.py", *ARGS)
    assert res.returncode == 1
    assert "error: data/eval/sft.jsonl: line 4: field 'passed': Field required" in res.stderr
    assert "Traceback" not in res.stderr
