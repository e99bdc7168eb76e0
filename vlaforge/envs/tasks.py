"""Meta-World task names: validation and benchmark expansion (MT10 / MT25 / MT50).

Cheap to import: task names come from our instruction table (a test checks they equal Meta-World's
own list); Meta-World itself (mujoco, gymnasium) is imported only to expand a benchmark name, so the
benchmark lists are Meta-World's, not a copy.
"""

from __future__ import annotations

import difflib
from typing import Sequence

from vlaforge.envs.instructions import ALL_TASKS, unknown_task_error

# Benchmark name -> attribute of metaworld.env_dict holding its ordered task dict.
BENCHMARKS: dict[str, str] = {"MT10": "MT10_V3", "MT25": "MT25_V3", "MT50": "MT50_V3"}


def benchmark_tasks(name: str) -> list[str]:
    """The task names of a Meta-World benchmark, in Meta-World's order (e.g. MT10 -> reach-v3, push-v3, ...)."""
    key = name.upper()
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}.")
    import metaworld.env_dict as env_dict  # lazy: pulls in mujoco + gymnasium

    return list(getattr(env_dict, BENCHMARKS[key]))


def task_index(task: str) -> int:
    """Index of ``task`` in ALL_TASKS: Meta-World's own one-hot task id, stable across envs and actors."""
    try:
        return ALL_TASKS.index(task)
    except ValueError:
        raise unknown_task_error(task) from None


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Expand benchmark names (MT10/MT25/MT50, any case) in place and validate every task name.

    Order and repeats are kept: the result can be a per-slot list (the same task in several slots).
    """
    if isinstance(names, str):  # a bare string would be iterated per character
        names = [names]
    out: list[str] = []
    for name in names:
        if name.upper() in BENCHMARKS:
            out.extend(benchmark_tasks(name))
        elif name in ALL_TASKS:
            out.append(name)
        else:
            close = difflib.get_close_matches(name, [*ALL_TASKS, *BENCHMARKS], n=1, cutoff=0.0)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown Meta-World task or benchmark {name!r}.{hint} "
                f"Use a *-v3 task name (e.g. 'reach-v3') or one of {sorted(BENCHMARKS)}."
            )
    if not out:
        raise ValueError("No tasks given: pass at least one *-v3 task name or a benchmark (MT10, MT50).")
    return out


__all__ = ["ALL_TASKS", "BENCHMARKS", "benchmark_tasks", "resolve_tasks", "task_index"]
