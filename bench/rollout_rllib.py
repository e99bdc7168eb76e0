"""RLlib 2.60 side of bench/rollout.py: the same Meta-World env and the same VLA inside RLlib's sampler.

- ``MetaWorldChunkEnv``: a gymnasium env around ONE simulator of our MetaWorldBatchedEnv (same renderer,
  camera, resolution). Observation Dict(image uint8 (V, H, W, 3), state float32 (S,)); an action is one
  chunk of n_action_steps actions, flattened to Box(n * A,) in [-1, 1], executed open-loop like our
  decisions (stops at an episode end); the reward is the chunk's sum and ``info["sim_steps"]`` the
  simulator steps it covered, which is what the benchmark counts. ``render_every_step`` True (default):
  every simulated step renders, as a per-step gym env does; False: one render per chunk, the same
  simulator work as our deferred-render rollout (isolates the framework's own overhead).
- ``VLARLModule``: our VLAPolicy + VLAProcessor as a TorchRLModule. Its action-distribution inputs are
  the mean and log-std of the chunk's first n positions, so RLlib's default TorchDiagGaussian samples
  the same stochastic chunks as our RolloutWorker.
Sampling runs through ``EnvRunnerGroup`` with K remote env runners (1 CPU each) x B envs per runner,
the RLlib counterpart of our K actors x B simulators.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys

INSTRUCTION = "push the puck to the goal"


class MetaWorldChunkEnv(gym.Env):
    def __init__(self, config: dict):
        from vlaforge.envs import EnvConfig, make_env

        torch.set_num_threads(1)
        self.env = make_env(EnvConfig.model_validate(config["env_cfg"]), [config["task"]], seed=int(config.get("seed", 0)))
        spec, self.n = self.env.spec, int(config["n_exec"])
        # True: the sub-steps of a chunk render as a per-step gym env does; False: one render per chunk,
        # the same simulator work as our deferred-render rollout (a control for framework overhead).
        self.render_every_step = bool(config.get("render_every_step", True))
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, spec.image_shape, np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n * spec.action_dim,), np.float32)
        self._a = spec.action_dim

    @staticmethod
    def _obs(td) -> dict:
        return {"image": td[keys.IMAGE][0].numpy(), "state": td[keys.STATE][0].numpy()}

    def reset(self, *, seed=None, options=None):
        td = self.env.reset(seeds=None if seed is None else [int(seed)])
        return self._obs(td), {}

    def step(self, action):
        chunk = np.clip(np.asarray(action, np.float32).reshape(self.n, self._a), -1.0, 1.0)
        reward, steps = 0.0, 0
        for j in range(self.n):
            act = torch.from_numpy(chunk[j : j + 1])
            nxt = self.env.step(act, render=self.render_every_step)[keys.NEXT]
            reward += float(nxt[keys.REWARD][0, 0])
            steps += 1
            if bool(nxt[keys.DONE][0, 0]):
                break
        obs = self._obs(nxt)
        if not self.render_every_step:
            obs["image"] = self.env.render([0])[0].numpy()  # the one image the policy sees
        terminated, truncated = bool(nxt[keys.TERMINATED][0, 0]), bool(nxt[keys.TRUNCATED][0, 0])
        return obs, reward, terminated, truncated, {"sim_steps": steps}


def _module_class():
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.torch import TorchRLModule

    class VLARLModule(TorchRLModule):
        def setup(self):
            from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

            mc = self.model_config
            self.vla = build_policy(PolicyConfig.model_validate(mc["policy"]), PolicySpec.from_dict(mc["spec"]))
            self.processor = VLAProcessor.from_dict(mc["processor"])
            self.n = int(mc["n_exec"])

        def _forward(self, batch, **kwargs):
            obs = batch[Columns.OBS]
            b = obs["state"].shape[0]
            td = TensorDict({keys.IMAGE: obs["image"].to(torch.uint8), keys.STATE: obs["state"].float()}, batch_size=[b])
            td.set(keys.INSTRUCTION, NonTensorStack.from_list([INSTRUCTION] * b))
            out = self.vla(self.processor(td, train=False))
            mean = out[keys.ACTION_MEAN][:, : self.n].flatten(1)  # (B, n*A)
            log_std = out[keys.ACTION_LOG_STD][:, : self.n].flatten(1)
            return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, log_std], dim=-1)}

    return VLARLModule


def _config(env_cfg, task: str, k: int, b: int, fragment: int, render_every_step: bool, module_class, pcfg, spec, proc):
    """PPOConfig with our env (K runners x B envs, ``fragment`` chunk-actions per env) and the VLA as the RLModule."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    n = pcfg.n_action_steps
    return (
        PPOConfig()
        .environment(env=MetaWorldChunkEnv, env_config={"env_cfg": env_cfg.model_dump(mode="json"), "task": task,
                                                        "n_exec": n, "render_every_step": render_every_step})
        .env_runners(num_env_runners=k, num_envs_per_env_runner=b, num_cpus_per_env_runner=1,
                     rollout_fragment_length=fragment, create_env_on_local_worker=False)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_class, model_config={
            "policy": pcfg.model_dump(mode="json"), "spec": spec.to_dict(), "processor": proc.to_dict(), "n_exec": n}))
    )


def bench_rllib(env_cfg, k: int, b: int, iters: int, pcfg, spec, proc, task: str, fragment: int,
                render_every_step: bool = True) -> dict:
    """Env steps/s of ``iters`` EnvRunnerGroup sample rounds (each: every runner samples ``fragment``
    chunk-actions per env), after one warm-up round."""
    import sys

    import ray
    import ray.cloudpickle
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # runners cannot import bench/
    config = _config(env_cfg, task, k, b, fragment, render_every_step, _module_class(), pcfg, spec, proc)
    group = EnvRunnerGroup(config=config, local_env_runner=False)
    try:
        if group.num_healthy_remote_workers() != k:
            raise RuntimeError(f"only {group.num_healthy_remote_workers()} of {k} RLlib env runners came up (see the log)")
        def sample_once() -> int:
            episodes = group.foreach_env_runner(lambda er: er.sample(), local_env_runner=False)
            if len(episodes) != k:
                raise RuntimeError(f"{len(episodes)} of {k} RLlib env runners returned samples (see the log)")
            # infos[0] belongs to the chunk's first observation (reset, or the previous chunk's last step):
            # the last len(ep) infos are this chunk's own steps.
            return sum(int(sum(i.get("sim_steps", 0) for i in ep.get_infos()[-len(ep):])) if len(ep) else 0
                       for eps in episodes for ep in eps)

        sample_once()  # warm-up
        steps, t0 = 0, time.perf_counter()
        for _ in range(iters):
            steps += sample_once()
        wall = time.perf_counter() - t0
    finally:
        group.stop()
    return {"env_steps_per_s": round(steps / wall, 1), "env_steps": steps, "wall_s": round(wall, 2),
            "setup": f"EnvRunnerGroup: {k} runners x {b} envs, fragment {fragment} chunk-actions, VLA as RLModule, "
                     f"{'render every sim step' if render_every_step else 'one render per chunk'}",
            "ray": ray.__version__}


# -- whole PPO iterations (bench/rl_iteration.py) ----------------------------------------------------------
def _ppo_module_class():
    """The VLA (with its value head) as an RLlib PPO module: the sampling module + ValueFunctionAPI."""
    from ray.rllib.core.rl_module.apis import ValueFunctionAPI

    base = _module_class()

    class VLAPPORLModule(base, ValueFunctionAPI):
        def compute_values(self, batch, embeddings=None):
            obs = batch["obs"]
            b = obs["state"].shape[0]
            td = TensorDict({keys.IMAGE: obs["image"].to(torch.uint8), keys.STATE: obs["state"].float()}, batch_size=[b])
            td.set(keys.INSTRUCTION, NonTensorStack.from_list([INSTRUCTION] * b))
            return self.vla(self.processor(td, train=False))[keys.VALUE].squeeze(-1)  # (B,)

    return VLAPPORLModule


def bench_rllib_ppo(env_cfg, k: int, b: int, t: int, epochs: int, minibatches: int, iters: int, pcfg, spec, proc,
                    task: str, lr: float) -> dict:
    """Env steps/s of ``iters`` RLlib PPO ``train()`` iterations (sample K runners x B envs x T chunk-actions,
    GAE, ``epochs`` x ``minibatches`` SGD steps, weight sync to the runners) after one warm-up iteration.
    Every simulated step renders (a per-step gym env), with the plain renderer's best settings (MSAA and
    shadows off: vlaforge/envs/render.py). Sim steps = chunk-actions x n_action_steps (episodes never end
    inside a chunk: envs.max_episode_steps is a multiple of it and terminate_on_success is off)."""
    import sys

    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # runners cannot import bench/
    n = pcfg.n_action_steps
    if env_cfg.max_episode_steps % n or env_cfg.terminate_on_success:
        raise ValueError("bench_rllib_ppo counts chunk-actions x n_action_steps: use max_episode_steps % n == 0 and "
                         "terminate_on_success false")
    batch = k * b * t
    config = (
        _config(env_cfg, task, k, b, t, True, _ppo_module_class(), pcfg, spec, proc)
        .learners(num_learners=0)  # the learner in the driver process, like one DeepSpeed rank
        .training(train_batch_size_per_learner=batch, minibatch_size=batch // minibatches, num_epochs=epochs, lr=lr,
                  gamma=0.99, lambda_=0.95, clip_param=0.2)
    )
    algo = config.build_algo()
    try:
        def chunk_steps(res) -> int:
            from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

            return int(res[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])

        algo.train()  # warm-up: runner start-up, first weights, allocator
        steps, times = 0, []
        for _ in range(iters):
            t0 = time.perf_counter()
            res = algo.train()
            times.append(time.perf_counter() - t0)
            steps += chunk_steps(res) * n
        wall = sum(times)
    finally:
        algo.stop()
    return {"env_steps_per_s": round(steps / wall, 1), "env_steps": steps, "wall_s": round(wall, 2),
            "iteration_s": [round(x, 2) for x in times],
            "setup": f"RLlib PPO (new API stack): {k} env runners x {b} envs, train batch {batch} chunk-actions, "
                     f"{epochs} epochs x minibatch {batch // minibatches}, learner in the driver, VLA + value head as "
                     "the RLModule, every sim step rendered (plain, MSAA/shadows off)",
            "ray": ray.__version__}
