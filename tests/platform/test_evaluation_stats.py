"""Honest evaluation statistics: the validation and test initial-state ranges are disjoint, and a stage's start
and end evaluations on the same states are compared per task by McNemar's exact test."""

from __future__ import annotations

import math

import pytest

from vlaforge.actors.config import EvalConfig
from vlaforge.platform.evaluation import episode_plan, mcnemar_exact, paired_comparison


def test_validation_and_test_splits_are_disjoint_seed_ranges():
    test = EvalConfig(episodes_per_task=5, envs_per_worker=5)
    val = EvalConfig(episodes_per_task=5, envs_per_worker=5, split="validation")
    seeds = {c.split: episode_plan(["reach-v3"], c)[0][1] for c in (test, val)}
    assert seeds["test"] == [1_000_000 + i for i in range(5)]
    assert seeds["validation"] == [2_000_000 + i for i in range(5)]
    with pytest.raises(ValueError, match="would overlap"):
        EvalConfig(episodes_per_task=20, seed_offset=100, validation_seed_offset=110)


def test_mcnemar_exact_p_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 6 discordant pairs, all one way
    assert mcnemar_exact(6, 0) == mcnemar_exact(0, 6)  # two-sided
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    # the exact binomial tail, summed independently
    b, c = 3, 12
    tail = sum(math.comb(15, i) for i in range(4)) / 2**15
    assert mcnemar_exact(b, c) == pytest.approx(2 * tail)


def _result(outcomes: dict[str, list[bool]], first_seed: int = 1_000_000) -> dict:
    return {"episodes": [{"task": t, "seed": first_seed + i, "success": s} for t, xs in outcomes.items()
                         for i, s in enumerate(xs)]}


def test_paired_comparison_pairs_episodes_by_task_and_seed():
    start = _result({"reach-v3": [False] * 8 + [True, True], "button-press-topdown-v3": [True] * 10})
    end = _result({"reach-v3": [True] * 7 + [False, True, False], "button-press-topdown-v3": [True] * 9 + [False]})
    p = paired_comparison(start, end)
    r = p["tasks"]["reach-v3"]
    assert (r["pairs"], r["both"], r["neither"], r["start_only"], r["end_only"]) == (10, 1, 1, 1, 7)
    assert r["delta"] == pytest.approx(0.6) and r["p_value"] == pytest.approx(mcnemar_exact(1, 7))
    bp = p["tasks"]["button-press-topdown-v3"]
    assert (bp["start_only"], bp["end_only"], bp["p_value"]) == (1, 0, 1.0)
    assert p["pooled"]["pairs"] == 20 and p["pooled"]["end_only"] == 7 and p["pooled"]["start_only"] == 2
    assert p["unpaired"] == 0
    # states evaluated once only are left out of the pairs and counted
    other = _result({"reach-v3": [True] * 10}, first_seed=1_000_005)
    assert paired_comparison(start, other)["tasks"]["reach-v3"]["pairs"] == 5
    assert paired_comparison(start, other)["unpaired"] == 15 + 5
