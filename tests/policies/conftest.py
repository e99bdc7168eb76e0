"""Tiny configs and raw observations shared by the policy tests (32 px, dim 32: fast on 2 shared cores).

Tests run in importlib mode (they cannot import this file): the helpers are exposed as fixtures.
State dim S=7, action dim A=4, chunk K=4, n_action_steps=2.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from vlaforge import keys
from vlaforge.policies import PolicyConfig, PolicySpec, VLAProcessor, build_policy

S, A, K = 7, 4, 4
INSTRUCTIONS = ["Push the puck to the goal", "open the drawer!", "press the button, from the top", ""]


def tiny_cfg(**over) -> PolicyConfig:
    base = dict(
        dim=32, layers=1, heads=2, chunk_size=K, n_action_steps=2,
        vision={"channels": [8, 16], "keypoints": 4},
        language={"vocab_size": 128, "max_tokens": 6, "layers": 1},
    )
    base.update(over)
    return PolicyConfig(**base)


def tiny_stats() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "observation.state": {"mean": torch.randn(S, generator=g).tolist(), "std": (torch.rand(S, generator=g) + 0.5).tolist()},
        "action": {
            "mean": [0.1, -0.2, 0.0, 0.3], "std": [0.5, 0.4, 0.0, 1.0],
            "min": [-1.0, -0.5, 0.2, -2.0], "max": [1.0, 0.5, 0.2, 2.0],
        },
    }


def make_obs(b: int, v: int = 1, hw: int = 32, with_chunk: bool = False, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    td = TensorDict(
        {keys.IMAGE: torch.randint(0, 256, (b, v, hw, hw, 3), dtype=torch.uint8, generator=g),
         keys.STATE: torch.randn(b, S, generator=g)},
        batch_size=[b],
    )
    td.set(keys.INSTRUCTION, NonTensorStack(*[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)]))
    if with_chunk:
        a = tiny_stats()["action"]  # actions inside the dataset range, as in real data
        lo, hi = torch.tensor(a["min"]), torch.tensor(a["max"])
        td.set(keys.ACTION_CHUNK, lo + torch.rand(b, K, A, generator=g) * (hi - lo))
        pad = torch.zeros(b, K, dtype=torch.bool)
        pad[0, -1] = True
        td.set(keys.ACTION_PAD, pad)
    return td


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):  # tests/conftest.py
    yield


@pytest.fixture(name="make_obs")
def make_obs_fixture():
    return make_obs


@pytest.fixture(name="tiny_cfg")
def tiny_cfg_fixture():
    return tiny_cfg


@pytest.fixture
def stats() -> dict:
    return tiny_stats()


@pytest.fixture
def spec() -> PolicySpec:
    return PolicySpec(image_shape=(1, 32, 32, 3), state_dim=S, action_dim=A)


@pytest.fixture
def cfg() -> PolicyConfig:
    return tiny_cfg()


@pytest.fixture
def processor(cfg) -> VLAProcessor:
    return VLAProcessor.from_stats(cfg, tiny_stats())


@pytest.fixture
def policy(cfg, spec):
    torch.manual_seed(0)
    return build_policy(cfg, spec)
