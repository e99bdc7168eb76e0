"""Rollouts with the generative heads (real Meta-World, in-process): the trajectory carries what each head's
log_prob needs (HEAD_EXTRAS), and a learner recomputes the stored log-prob from it exactly."""

from __future__ import annotations

import pytest
import torch

from vlaforge import keys
from vlaforge.actors.config import RolloutConfig
from vlaforge.actors.rollout import PolicySource, RolloutWorker
from vlaforge.envs.config import EnvConfig
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

S, A, N_EXEC, K = 4, 4, 3, 4
TASKS = ["reach-v3", "push-v3"]
HEADS = {
    "tokens": ({"type": "tokens", "tokens": {"num_bins": 16}}, keys.ACTION_TOKENS, (K * A,)),
    "diffusion": ({"type": "diffusion", "diffusion": {"train_steps": 20, "inference_steps": 3}}, keys.DENOISE_CHAIN, (4, K, A)),
    "flow": ({"type": "flow", "flow": {"inference_steps": 3}}, keys.DENOISE_CHAIN, (4, K, A)),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEADS))
def test_rollout_stores_head_extras_and_log_probs_recompute(name):
    import vlaforge.envs.metaworld  # noqa: F401 -- registers "metaworld"

    head, extra_key, extra_shape = HEADS[name]
    cfg = PolicyConfig(dim=32, layers=1, heads=2, chunk_size=K, n_action_steps=N_EXEC, value_head=True, head=head,
                       vision={"channels": [8, 16], "keypoints": 4}, language={"vocab_size": 128, "max_tokens": 6, "layers": 1})
    stats = {"observation.state": {"mean": [0.0] * S, "std": [1.0] * S},
             "action": {"mean": [0.0] * A, "std": [1.0] * A, "min": [-1.0] * A, "max": [1.0] * A}}
    spec = PolicySpec((1, 32, 32, 3), S, A)
    torch.manual_seed(0)
    proc = VLAProcessor.from_stats(cfg, stats)
    env_cfg = EnvConfig(backend="metaworld", image_size=32, tasks=TASKS, state="proprio", max_episode_steps=5,
                        terminate_on_success=False)

    class NoWeights:
        version = 0

        def maybe_load(self, module, handle) -> bool:
            return False

    w = RolloutWorker(env_cfg, PolicySource.from_parts(cfg, spec, proc),
                      RolloutConfig(envs_per_actor=2, steps_per_sample=3, seed=1), TASKS, NoWeights(), rank=0)
    try:
        d = w.sample().data  # [2, 3]: 5-step episodes, 3 actions per chunk -> the second chunk is cut to 2
        extras = d[keys.HEAD_EXTRAS]
        assert extras[extra_key].shape == (2, 3, *extra_shape)
        assert bool(d[keys.ACTION_PAD][:, 1, 2].all())  # cut by the episode end
        flat = d.reshape(-1)
        with torch.no_grad():
            out = w.policy(w.processor(flat, train=False))
            lp = w.policy.log_prob(out, flat[keys.ACTION_CHUNK], flat[keys.ACTION_PAD], flat[keys.HEAD_EXTRAS])
        torch.testing.assert_close(lp, flat[keys.LOG_PROB], rtol=1e-4, atol=1e-3)
        if extra_key == keys.DENOISE_CHAIN:  # the chain ends in the executed chunk
            torch.testing.assert_close(extras[extra_key][:, :, -1], d[keys.ACTION_CHUNK])
    finally:
        w.close()
