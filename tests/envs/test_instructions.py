"""Instruction paraphrases and task names: pure Python, no simulator (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs.instructions import ALL_TASKS, instructions_for, paraphrases, sample_instruction
from vlaforge.envs.tasks import resolve_tasks, task_index


def test_every_task_has_distinct_paraphrases():
    assert len(ALL_TASKS) == 50
    for task in ALL_TASKS:
        p = paraphrases(task)
        assert len(p) >= 4, task
        assert len(set(p)) == len(p), f"duplicate paraphrase in {task}"
        assert all(s and s == s.strip() and s[0].islower() for s in p), task
    # no wording is shared between two tasks: an instruction identifies its task
    flat = [s for t in ALL_TASKS for s in paraphrases(t)]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("heldout", [0, 1, 2])
def test_splits_are_disjoint_and_cover(heldout):
    for task in ALL_TASKS:
        train = instructions_for(task, "train", heldout)
        held = instructions_for(task, "heldout", heldout) if heldout else []
        assert not set(train) & set(held)
        assert train + held == instructions_for(task, "all", heldout) == paraphrases(task)
        assert held == paraphrases(task)[len(paraphrases(task)) - heldout :]  # the LAST ones


def test_split_errors():
    with pytest.raises(ValueError, match="empty"):
        instructions_for("reach-v3", "heldout", 0)
    with pytest.raises(ValueError, match="heldout=5"):
        instructions_for("reach-v3", "train", 5)
    with pytest.raises(ValueError, match="split"):
        instructions_for("reach-v3", "test", 1)  # type: ignore[arg-type]


def test_sample_instruction_reproducible_and_in_split():
    draws = [sample_instruction("push-v3", "train", 1, np.random.default_rng(s)) for s in range(40)]
    again = [sample_instruction("push-v3", "train", 1, np.random.default_rng(s)) for s in range(40)]
    assert draws == again
    assert set(draws) == set(instructions_for("push-v3", "train", 1))  # 40 draws hit all 4


def test_unknown_task_names_the_closest():
    with pytest.raises(ValueError, match="'drawer-open-v3'"):
        paraphrases("drawer_open-v3")
    with pytest.raises(ValueError, match="'reach-v3'"):
        resolve_tasks(["reach-v2"])
    with pytest.raises(ValueError, match="'MT10'"):
        resolve_tasks(["MT-10"])


def test_resolve_tasks_expands_benchmarks_from_metaworld():
    import metaworld.env_dict as mw

    assert ALL_TASKS == tuple(mw.ALL_V3_ENVIRONMENTS)  # same names, same order (one-hot ids)
    mt10 = resolve_tasks(["MT10"])
    assert mt10 == list(mw.MT10_V3) and len(mt10) == 10 and mt10[0] == "reach-v3"
    assert resolve_tasks(["mt50"]) == list(ALL_TASKS)
    # order and repeats are kept (per-slot lists)
    assert resolve_tasks(["push-v3", "push-v3", "MT10"]) == ["push-v3", "push-v3", *mt10]
    assert resolve_tasks("reach-v3") == ["reach-v3"]
    assert task_index("assembly-v3") == 0 and task_index("window-close-v3") == 49
    with pytest.raises(ValueError, match="No tasks"):
        resolve_tasks([])
