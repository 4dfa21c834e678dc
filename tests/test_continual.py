"""Continual-learning metrics and the sleep-pressure scheduler, on hand-made inputs worked out by hand."""

from __future__ import annotations

import math

import pytest

from bioreasoner.training.continual import (
    SleepPressureParams,
    SleepSignals,
    bwt,
    cl_metrics,
    forgetting,
    non_finite_steps,
    seen_acc_auc,
    seen_acc_avg,
    seen_loss_avg,
    sleep_batch_metrics,
    sleep_steps,
    trajectory_auc,
)

NAN, INF = math.nan, math.inf

# Rows = boundaries (parent, grpo, sleep), columns = tasks (qa, gap_analysis); every task learned at 0 (SFT).
MIXED = [
    [0.50, 0.80],  # parent
    [0.70, 0.60],  # grpo: qa up, gap down
    [0.60, 0.40],  # sleep: both below their best
]
# The CLS MVP's own convention [D8]: task j learned at boundary j (learned_at = [0, 1, 2]); a GEM-style lower triangle.
SEED = [
    [0.90, 0.10, 0.00],
    [0.70, 0.80, 0.20],
    [0.60, 0.70, 0.90],
]

# ----------------------------------------------------------------------------- per-boundary metrics


@pytest.mark.parametrize(
    ("A", "learned_at", "avg", "forg", "bw", "auc"),
    [
        # MIXED, final boundary: seen = both, avg (.6+.4)/2 = .5
        # forgetting = ((max(.5,.7)-.6) + (max(.8,.6)-.4)) / 2 = (.1 + .4) / 2 = .25
        # bwt = ((.6-.5) + (.4-.8)) / 2 = (.1 - .4) / 2 = -.15
        # trajectory .65, .65, .5 -> auc = ((.65+.65)/2 + (.65+.5)/2) / 2 = (.65 + .575) / 2 = .6125
        (MIXED, None, 0.5, 0.25, -0.15, 0.6125),
        # same with learned_at given explicitly as all zeros: identical
        (MIXED, [0, 0], 0.5, 0.25, -0.15, 0.6125),
        # the MVP's convention, final boundary i=2: seen j<=2, avg (.6+.7+.9)/3 = .7333..
        # prior j<2: forgetting = ((max(.9,.7)-.6) + (max(.1,.8)-.7)) / 2 = (.3 + .1) / 2 = .2
        # bwt = ((.6-.9) + (.7-.8)) / 2 = -.2  (= GEM's 1/(T-1) sum R_{T,i} - R_{i,i})
        # trajectory .9, (.7+.8)/2 = .75, .7333.. -> auc = ((.9+.75)/2 + (.75+.7333..)/2) / 2 = .78333..
        (SEED, [0, 1, 2], 2.2 / 3, 0.2, -0.2, (0.825 + (0.75 + 2.2 / 3) / 2) / 2),
        # no forgetting: nothing ends below its best; forgetting = (max(.4,.6)-.6 + max(.5,.7)-.7)/2 = 0
        # bwt = ((.6-.4) + (.7-.5)) / 2 = .2 >= 0; trajectory .45, .65, .65 -> auc = (.55 + .65)/2 = .6
        ([[0.4, 0.5], [0.6, 0.7], [0.6, 0.7]], None, 0.65, 0.0, 0.2, 0.6),
        # constant matrix: forgetting 0 and bwt 0 exactly
        ([[0.3, 0.7], [0.3, 0.7], [0.3, 0.7]], None, 0.5, 0.0, 0.0, 0.5),
        # still improving at the last boundary: the seed formula is unclipped, so forgetting goes negative
        # forgetting = ((max(.4,.5)-.6) + (max(.5,.5)-.7)) / 2 = (-.1 - .2) / 2 = -.15; bwt = (.2 + .2) / 2 = .2
        # trajectory .45, .5, .65 -> auc = ((.45+.5)/2 + (.5+.65)/2) / 2 = (.475 + .575) / 2 = .525
        ([[0.4, 0.5], [0.5, 0.5], [0.6, 0.7]], None, 0.65, -0.15, 0.2, 0.525),
        # pure forgetting, monotone decline: forgetting = ((.8-.4) + (.6-.3)) / 2 = .35 = -bwt
        # trajectory .7, .55, .35 -> auc = ((.7+.55)/2 + (.55+.35)/2) / 2 = (.625 + .45) / 2 = .5375
        ([[0.8, 0.6], [0.6, 0.5], [0.4, 0.3]], None, 0.35, 0.35, -0.35, 0.5375),
        # single boundary: no prior task, so forgetting = bwt = 0; auc of one point is the point, (.3+.5)/2
        ([[0.3, 0.5]], None, 0.4, 0.0, 0.0, 0.4),
        # single boundary, seed convention with more tasks than boundaries: only task 0 is seen
        ([[0.3, 0.5, 0.9]], [0, 1, 2], 0.3, 0.0, 0.0, 0.3),
        # a task learned after the last row (learned_at 5) is never seen nor prior: only column 0 counts
        # forgetting = .8 - .6 = .2, bwt = .6 - .8 = -.2, trajectory .8, .6 -> auc .7
        ([[0.8, 0.1], [0.6, 0.9]], [0, 5], 0.6, 0.2, -0.2, 0.7),
        # task 1 learned at grpo (boundary 1): at i=2 prior = both
        # forgetting = ((max(.5,.6)-.6) + (max(.2,.9)-.7)) / 2 = (0 + .2) / 2 = .1
        # bwt = ((.6-.5) + (.7-.9)) / 2 = (.1 - .2) / 2 = -.05   (task 1 against A[1][1], not A[0][1])
        # trajectory .5 (task 0 only), .75, .65 -> auc = ((.5+.75)/2 + (.75+.65)/2) / 2 = (.625 + .7) / 2 = .6625
        ([[0.5, 0.2], [0.6, 0.9], [0.6, 0.7]], [0, 1], 0.65, 0.1, -0.05, 0.6625),
    ],
)
def test_final_metrics(A, learned_at, avg, forg, bw, auc):
    assert seen_acc_avg(A, learned_at) == pytest.approx(avg)
    assert forgetting(A, learned_at) == pytest.approx(forg)
    assert bwt(A, learned_at) == pytest.approx(bw)
    assert seen_acc_auc(A, learned_at) == pytest.approx(auc)


@pytest.mark.parametrize(
    ("A", "learned_at", "boundary", "avg", "forg", "bw"),
    [
        # boundary 0 never has a prior task: forgetting = bwt = 0 even in the seed convention
        (MIXED, None, 0, 0.65, 0.0, 0.0),
        (SEED, [0, 1, 2], 0, 0.9, 0.0, 0.0),
        # MIXED at grpo: forgetting = ((.5-.7) + (.8-.6)) / 2 = 0, bwt = ((.7-.5) + (.6-.8)) / 2 = 0
        (MIXED, None, 1, 0.65, 0.0, 0.0),
        # SEED at i=1: seen j<=1 avg (.7+.8)/2 = .75; prior j=0: forgetting .9-.7 = .2, bwt .7-.9 = -.2
        (SEED, [0, 1, 2], 1, 0.75, 0.2, -0.2),
        # negative indices count from the end: -1 is the last boundary
        (MIXED, None, -1, 0.5, 0.25, -0.15),
        (MIXED, None, -3, 0.65, 0.0, 0.0),
    ],
)
def test_metrics_at_boundary(A, learned_at, boundary, avg, forg, bw):
    assert seen_acc_avg(A, learned_at, boundary) == pytest.approx(avg)
    assert forgetting(A, learned_at, boundary) == pytest.approx(forg)
    assert bwt(A, learned_at, boundary) == pytest.approx(bw)


@pytest.mark.parametrize(
    ("ys", "expected"),
    [
        ([0.4], 0.4),  # one point: the point itself
        ([0.2, 0.6], 0.4),  # one interval: (.2+.6)/2
        ([0.0, 1.0, 1.0], 0.75),  # (.5 + 1) / 2
        ([1.0, 0.0, 0.0, 1.0], 1.0 / 3),  # (.5 + 0 + .5) / 3
    ],
)
def test_trajectory_auc(ys, expected):
    assert trajectory_auc(ys) == pytest.approx(expected)


def test_seen_loss_avg():
    L = [[2.0, 1.0, 4.0], [1.5, 0.5, 3.0]]
    assert seen_loss_avg(L) == pytest.approx(5.0 / 3)  # all seen: (1.5+.5+3)/3
    assert seen_loss_avg(L, [0, 1, 2]) == pytest.approx(1.0)  # seen j<=1: (1.5+.5)/2
    assert seen_loss_avg(L, [0, 1, 2], 0) == pytest.approx(2.0)  # seen j=0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("A", "learned_at", "boundary", "match"),
    [
        ([], None, -1, "no rows"),  # no boundaries
        ([[]], None, -1, "no columns"),  # no tasks
        ([[0.5, 0.5], [0.5]], None, -1, "not rectangular"),  # ragged
        ([[0.5, NAN]], None, -1, r"A\[0\]\[1\] is not finite"),  # NaN
        ([[0.5], [INF]], None, -1, r"A\[1\]\[0\] is not finite"),  # Inf
        ([[0.5, "0.7"]], None, -1, "not a number"),  # a string cell
        ([[0.5, True]], None, -1, "not a number"),  # a bool is not an accuracy
        ([[0.5, 0.5]], [0], -1, "1 entries for 2 tasks"),  # learned_at too short
        ([[0.5, 0.5]], [0, -1], -1, "non-negative int"),  # negative learned_at
        ([[0.5, 0.5]], [0, 1.0], -1, "non-negative int"),  # float learned_at
        ([[0.5, 0.5]], [1, 2], -1, "learned at boundary 0"),  # nothing seen at boundary 0
        ([[0.5, 0.5]], None, 1, "out of range"),  # boundary past the end
        ([[0.5, 0.5]], None, -2, "out of range"),  # boundary before the start
    ],
)
def test_metric_errors(A, learned_at, boundary, match):
    for fn in (seen_acc_avg, forgetting, bwt):
        with pytest.raises(ValueError, match=match):
            fn(A, learned_at, boundary)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boundaries": ["parent", "grpo"], "tasks": ["qa", "gap"]}, "2 boundary names for 3 rows"),
        ({"boundaries": ["parent", "grpo", "sleep"], "tasks": ["qa"]}, "1 task names for 2 columns"),
        ({"boundaries": ["parent", "grpo", "grpo"], "tasks": ["qa", "gap"]}, "duplicate boundary"),
        ({"boundaries": ["parent", "grpo", "sleep"], "tasks": ["qa", "qa"]}, "duplicate task"),
        # L must have A's shape and be finite
        ({"boundaries": ["p", "g", "s"], "tasks": ["qa", "gap"], "L": [[1.0, 1.0]] * 2}, "L has shape 2x2"),
        ({"boundaries": ["p", "g", "s"], "tasks": ["qa", "gap"], "L": [[1.0, NAN]] * 3}, r"L\[0\]\[1\] is not finite"),
    ],
)
def test_cl_metrics_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl_metrics(MIXED, **kwargs)


# ----------------------------------------------------------------------------- JSON summary


def test_cl_metrics_dict():
    L = [[1.2, 0.9], [1.0, 1.1], [1.1, 1.3]]
    out = cl_metrics(MIXED, boundaries=["parent", "grpo", "sleep"], tasks=["qa", "gap_analysis"], L=L)
    assert out == {
        "boundaries": ["parent", "grpo", "sleep"],
        "tasks": ["qa", "gap_analysis"],
        "learned_at": {"qa": "parent", "gap_analysis": "parent"},
        "acc_matrix": {
            "parent": {"qa": 0.5, "gap_analysis": 0.8},
            "grpo": {"qa": 0.7, "gap_analysis": 0.6},
            "sleep": {"qa": 0.6, "gap_analysis": 0.4},
        },
        "seen_acc_avg": {"parent": 0.65, "grpo": 0.65, "sleep": 0.5},
        "forgetting": {"parent": 0.0, "grpo": 0.0, "sleep": 0.25},
        "bwt": {"parent": 0.0, "grpo": 0.0, "sleep": -0.15},
        "final_seen_acc_avg": 0.5,
        "final_forgetting": 0.25,
        "final_bwt": -0.15,
        "seen_acc_auc": 0.6125,
        "loss_matrix": {
            "parent": {"qa": 1.2, "gap_analysis": 0.9},
            "grpo": {"qa": 1.0, "gap_analysis": 1.1},
            "sleep": {"qa": 1.1, "gap_analysis": 1.3},
        },
        "seen_loss_avg": {"parent": 1.05, "grpo": 1.05, "sleep": 1.2},
        "final_seen_loss_avg": 1.2,
    }


def test_cl_metrics_rounds_and_seed_convention():
    out = cl_metrics(SEED, boundaries=["t0", "t1", "t2"], tasks=["a", "b", "c"], learned_at=[0, 1, 2])
    assert out["learned_at"] == {"a": "t0", "b": "t1", "c": "t2"}
    assert out["seen_acc_avg"] == {"t0": 0.9, "t1": 0.75, "t2": 0.7333}  # 2.2/3 rounded to 4 decimals
    assert out["seen_acc_auc"] == 0.7833
    assert (out["final_forgetting"], out["final_bwt"]) == (0.2, -0.2)
    assert "loss_matrix" not in out


# ----------------------------------------------------------------------------- numerical health, sleep batches


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], (0, -1)),  # nothing logged
        ([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9, "mode": "x"}], (0, -1)),  # strings are ignored
        # steps 2 (twice, counted once) and 5 are non-finite; the first is 2
        (
            [
                {"step": 1, "loss": 1.0},
                {"step": 2, "loss": NAN},
                {"step": 2, "grad_norm": INF},
                {"step": 3, "loss": 1.0, "ok": True},
                {"step": 5, "loss": -INF},
            ],
            (2, 2),
        ),
    ],
)
def test_non_finite_steps(history, expected):
    out = non_finite_steps(history)
    assert (out["non_finite_step_count"], out["first_non_finite_step"]) == expected


def test_non_finite_steps_needs_int_step():
    with pytest.raises(ValueError, match="has no 'step'"):
        non_finite_steps([{"loss": 1.0}])
    with pytest.raises(ValueError, match="must be an int"):
        non_finite_steps([{"step": 1.5, "loss": 1.0}])


@pytest.mark.parametrize(
    ("replay", "pseudo", "f_replay", "f_pseudo", "ratio", "mode"),
    [
        (6, 2, 16, 4, 0.25, "mixed_replay_pseudo"),  # 2 / (6 + 2)
        (8, 0, 16, 0, 0.0, "replay_only"),  # pseudo disabled
        (6, 2, 16, 0, 0.25, "replay_only"),  # pseudo in distillation but Fisher from replay only
        (0, 3, 0, 3, 1.0, "mixed_replay_pseudo"),  # all pseudo
    ],
)
def test_sleep_batch_metrics(replay, pseudo, f_replay, f_pseudo, ratio, mode):
    out = sleep_batch_metrics(
        replay_batch_size=replay,
        pseudo_batch_size=pseudo,
        fisher_replay_samples=f_replay,
        fisher_pseudo_samples=f_pseudo,
    )
    assert out == {
        "replay_batch_size_sleep": replay,
        "pseudo_batch_size": pseudo,
        "sleep_mix_ratio_pseudo": ratio,
        "fisher_replay_samples": f_replay,
        "fisher_pseudo_samples": f_pseudo,
        "fisher_source_mode": mode,
    }


@pytest.mark.parametrize(
    ("replay", "pseudo", "match"),
    [(0, 0, "at least one"), (-1, 2, "non-negative int"), (2, 1.5, "non-negative int")],
)
def test_sleep_batch_metrics_errors(replay, pseudo, match):
    with pytest.raises(ValueError, match=match):
        sleep_batch_metrics(
            replay_batch_size=replay, pseudo_batch_size=pseudo, fisher_replay_samples=0, fisher_pseudo_samples=0
        )


# ----------------------------------------------------------------------------- sleep-pressure scheduler

# min 2, max 10 (span 8); a signal at its reference counts as full pressure.
REFS = {"saturation_ref": 4.0, "novelty_ref": 0.5, "forgetting_ref": 0.1}
P = SleepPressureParams(min_sleep_steps=2, max_sleep_steps=10, **REFS)


@pytest.mark.parametrize(
    ("params", "signals", "pressure", "steps"),
    [
        # zero signals -> pressure 0 -> min steps
        (P, (0.0, 0.0, 0.0), 0.0, 2),
        # every signal exactly at its reference -> pressure 1 -> max steps
        (P, (4.0, 0.5, 0.1), 1.0, 10),
        # far above the references: each clipped to 1 -> max steps, never more
        (P, (80.0, 5.0, 0.9), 1.0, 10),
        # middle: sat 2/4 = .5, nov .125/.5 = .25, forg 0 -> p = .75/3 = .25 -> 2 + .25*8 = 4
        (P, (2.0, 0.125, 0.0), 0.25, 4),
        # replay accuracy went up (negative forgetting) clips to 0: same as the middle case
        (P, (2.0, 0.125, -0.05), 0.25, 4),
        # only forgetting, half its reference: p = .5/3 -> 2 + 8/6 = 3.33 -> 3
        (P, (0.0, 0.0, 0.05), 0.5 / 3, 3),
        # weights 2:1:1, only saturation, at its reference: p = 2/4 = .5 -> 2 + 4 = 6
        (
            SleepPressureParams(min_sleep_steps=2, max_sleep_steps=10, saturation_weight=2.0, **REFS),
            (4.0, 0, 0),
            0.5,
            6,
        ),
        # novelty weight 0: a huge novelty is ignored -> min steps
        (SleepPressureParams(min_sleep_steps=2, max_sleep_steps=10, novelty_weight=0.0, **REFS), (0, 9.0, 0), 0.0, 2),
        # rounds half up: span 4, sat 1.5/4 = .375, p = .375/3 = .125 -> 2 + .5 = 2.5 -> 3 (round() would give 2)
        (SleepPressureParams(min_sleep_steps=2, max_sleep_steps=6, **REFS), (1.5, 0.0, 0.0), 0.125, 3),
        # min == max: that number whatever the pressure
        (SleepPressureParams(min_sleep_steps=5, max_sleep_steps=5, **REFS), (4.0, 0.5, 0.1), 1.0, 5),
        # min 0 is allowed: no pressure, no sleep
        (SleepPressureParams(min_sleep_steps=0, max_sleep_steps=3, **REFS), (0.0, 0.0, 0.0), 0.0, 0),
    ],
)
def test_sleep_steps(params, signals, pressure, steps):
    got_steps, got_pressure, detail = sleep_steps(SleepSignals(*signals), params)
    assert got_steps == steps
    assert isinstance(got_steps, int)
    assert got_pressure == pytest.approx(pressure)
    assert detail["sleep_steps"] == steps
    assert detail["sleep_pressure"] == round(got_pressure, 4)
    # a mapping gives the same answer as the dataclass
    mapping = dict(zip(("saturation", "novelty", "forgetting"), signals, strict=True))
    assert sleep_steps(mapping, params) == (got_steps, got_pressure, detail)


def test_sleep_steps_detail():
    _, _, detail = sleep_steps({"saturation": 2.0, "novelty": 0.125, "forgetting": -0.05}, P)
    assert detail == {
        "saturation": 2.0,
        "saturation_norm": 0.5,
        "novelty": 0.125,
        "novelty_norm": 0.25,
        "forgetting": -0.05,
        "forgetting_norm": 0.0,
        "sleep_pressure": 0.25,
        "sleep_steps": 4,
        "min_sleep_steps": 2,
        "max_sleep_steps": 10,
    }


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"min_sleep_steps": 11}, "min_sleep_steps 11 > max_sleep_steps 10"),  # min > max
        ({"min_sleep_steps": -1}, "non-negative int"),
        ({"max_sleep_steps": 4.0}, "non-negative int"),
        ({"novelty_ref": 0.0}, "novelty_ref must be a finite number > 0"),
        ({"saturation_ref": INF}, "saturation_ref must be a finite number > 0"),
        ({"forgetting_weight": -1.0}, "forgetting_weight must be a finite number >= 0"),
        ({"saturation_weight": 0, "novelty_weight": 0, "forgetting_weight": 0}, "at least one scheduler weight"),
    ],
)
def test_params_errors(overrides, match):
    kwargs = {"min_sleep_steps": 2, "max_sleep_steps": 10, **REFS, **overrides}
    with pytest.raises(ValueError, match=match):
        SleepPressureParams(**kwargs)


def test_params_from_dict():
    d = {"min_sleep_steps": 2, "max_sleep_steps": 10, **REFS}
    assert SleepPressureParams.from_dict(d) == P
    with pytest.raises(ValueError, match=r"unknown sleep scheduler keys \['max_steps'\]"):
        SleepPressureParams.from_dict({**d, "max_steps": 3})


@pytest.mark.parametrize(
    ("signals", "match"),
    [
        ({"saturation": NAN, "novelty": 0.0, "forgetting": 0.0}, "'saturation' must be a finite number"),
        ({"saturation": 0.0, "novelty": INF, "forgetting": 0.0}, "'novelty' must be a finite number"),
        ({"saturation": 0.0, "novelty": 0.0}, r"missing \['forgetting'\]"),
        ({"saturation": 0.0, "novelty": 0.0, "forgetting": 0.0, "kl": 1.0}, r"unknown \['kl'\]"),
    ],
)
def test_sleep_steps_errors(signals, match):
    with pytest.raises(ValueError, match=match):
        sleep_steps(signals, P)
