"""The codes -> actions linear probe (issue 7) on synthetic data: informative codes score high, controls ~0."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.learners.probe import linear_probe, one_hot


def _data(informative: bool, n_eps: int = 40, length: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 8, (n_eps * length, 2))  # 2 positions, codebook 8
    table = rng.normal(size=(2, 8, 3))  # each (position, code) adds a fixed action offset
    signal = table[0, codes[:, 0]] + table[1, codes[:, 1]]  # (N, 3)
    actions = (signal if informative else rng.normal(size=signal.shape)) + 0.3 * rng.normal(size=signal.shape)
    return codes, actions, np.repeat(np.arange(n_eps), length)


def test_informative_codes_beat_the_controls():
    codes, actions, eps = _data(informative=True)
    r = linear_probe(codes, actions, eps, num_codes=8)
    assert r.r2 > 0.85 and len(r.r2_per_dim) == 3 and r.codes_used == 16
    assert abs(r.r2_shuffled) < 0.1 and abs(r.r2_random) < 0.1
    assert r.n_train + r.n_test == len(codes) and r.n_test == 10 * 25  # whole episodes held out


def test_meaningless_codes_score_near_zero():
    codes, actions, eps = _data(informative=False)
    assert abs(linear_probe(codes, actions, eps, num_codes=8).r2) < 0.1


def test_collapsed_codebook_scores_zero():
    codes, actions, eps = _data(informative=True)
    assert abs(linear_probe(np.zeros_like(codes), actions, eps, num_codes=8).r2) < 0.05


def test_input_mistakes():
    codes, actions, eps = _data(informative=True)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(codes, np.full_like(actions, np.nan), eps, num_codes=8)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        one_hot(codes, 4)
    with pytest.raises(ValueError, match="2 episodes"):
        linear_probe(codes, actions, np.zeros(len(codes), int), num_codes=8)
