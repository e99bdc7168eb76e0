"""Evaluation actors that hang (SIGSTOP) or die (SIGKILL) mid-wave on real Ray + Meta-World: each is killed
and replaced, its wave re-runs on the same seeds, the result is complete and lists the faults; past
runtime.max_eval_restarts the evaluation stops with a clear error instead of waiting for ever."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import ray.cloudpickle

from vlaforge.actors.config import EvalConfig
from vlaforge.actors.evaluator import EvalWorker
from vlaforge.envs import EnvConfig
from vlaforge.platform.evaluation import EvaluationError, run_evaluation
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy, save_pretrained
from vlaforge.runtime.config import TimeoutsConfig

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

S, A = 4, 4
PCFG = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=4, n_action_steps=2,
                    vision={"channels": [8, 16], "keypoints": 4}, language={"vocab_size": 128, "max_tokens": 6, "layers": 1})
STATS = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S},
         "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}
ENV = EnvConfig(backend="metaworld", image_size=32, tasks=["reach-v3"], state="proprio", max_episode_steps=6)
EVAL = EvalConfig(episodes_per_task=2, num_workers=1, envs_per_worker=1, videos_per_task=0)
# actor -> test signals through the file system. One folder per test session (made at import; the worker
# class is pickled by value, so the actors see this very path): two pytest sessions on one machine must not
# consume each other's markers (a shared path made one session's actors skip or repeat their fault).
MARKERS = Path(tempfile.mkdtemp(prefix="vlaforge-eval-faults-"))


class MisbehavingWorker(EvalWorker):
    """First incarnation: stops itself (SIGSTOP) in its first wave; second: kills itself (SIGKILL); then fine."""

    def run_wave(self, task, seeds, record):
        for name, sig in (("stopped", signal.SIGSTOP), ("killed", signal.SIGKILL)):
            marker = MARKERS / name
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), sig)
        return super().run_wave(task, seeds, record)


@pytest.fixture
def policy_dir(tmp_path):
    import torch

    torch.manual_seed(0)
    cfg, spec = PCFG, PolicySpec((1, 32, 32, 3), S, A)
    return save_pretrained(tmp_path / "policy", build_policy(cfg, spec), VLAProcessor.from_stats(cfg, STATS), cfg, spec)


def _clean():
    MARKERS.mkdir(exist_ok=True)
    for f in MARKERS.iterdir():
        f.unlink()


def test_hung_and_dead_eval_actors_are_replaced_and_their_wave_rerun(ray_cluster, policy_dir, tmp_path):
    _clean()
    result = run_evaluation(policy_dir, ENV, EVAL, tmp_path / "eval", ["reach-v3"], progress=False,
                            timeouts_cfg=TimeoutsConfig(eval_wave_s=8, actor_start_s=300), max_restarts=2,
                            worker_cls=MisbehavingWorker)
    assert [e["seed"] for e in result["episodes"]] == [EVAL.seed_offset, EVAL.seed_offset + 1]  # complete, same seeds
    assert [f["fault"] for f in result["faults"]] == ["evaluation actor hung (no result within "
                                                      "runtime.timeouts.eval_wave_s=8 s)", "evaluation actor died"]
    assert all(f["handled"] == "killed and replaced; the wave re-run on the same seeds" for f in result["faults"])
    stopped = int((MARKERS / "stopped").read_text())
    assert not Path(f"/proc/{stopped}").exists() or Path(f"/proc/{stopped}/stat").read_text().split(") ")[1][0] == "Z"


def test_past_the_restart_budget_evaluation_stops_with_a_clear_error(ray_cluster, policy_dir, tmp_path):
    _clean()
    with pytest.raises(EvaluationError, match=r"evaluation actor 0 died on wave reach-v3 seeds \[1000000\]; that is "
                                              r"2 failures, runtime.max_eval_restarts=1"):
        run_evaluation(policy_dir, ENV, EVAL, tmp_path / "eval", ["reach-v3"], progress=False,
                       timeouts_cfg=TimeoutsConfig(eval_wave_s=8, actor_start_s=300), max_restarts=1,
                       worker_cls=MisbehavingWorker)
