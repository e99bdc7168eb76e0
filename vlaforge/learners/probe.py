"""Linear probe (issue 7): do discrete latent-action codes carry the true, hidden actions?

    codes (N, n) int in [0, K)  --one-hot per position--> (N, n*K)  --ridge regression--> actions (N, A)

Fit on a training split of EPISODES (frames of one episode are correlated: a frame split would leak), score
R^2 on the held-out episodes (1 - SSE/SST per action dimension, then averaged), and the same probe on two
controls with the same shapes: codes shuffled across samples (same code histogram, no link to the frame) and
uniformly random codes. Codes that mean something score well above both; a collapsed codebook scores ~0.
Closed-form ridge (numpy): a dozen lines, no sklearn dependency for one regression.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ProbeResult:
    r2: float  # held-out R^2 of codes -> actions (mean over action dimensions)
    r2_per_dim: list[float]
    r2_shuffled: float  # the same probe on codes permuted across samples
    r2_random: float  # the same probe on uniformly random codes
    n_train: int
    n_test: int
    codes_used: int  # distinct (position, code) one-hot columns seen

    def to_dict(self) -> dict:
        return asdict(self)


def one_hot(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """(N, n) int codes -> (N, n * num_codes) float one-hot (position-major)."""
    codes = np.asarray(codes).reshape(len(codes), -1)
    if codes.min() < 0 or codes.max() >= num_codes:
        raise ValueError(f"codes must lie in [0, {num_codes}), got [{codes.min()}, {codes.max()}]")
    n = codes.shape[1]
    out = np.zeros((len(codes), n * num_codes))
    out[np.arange(len(codes))[:, None], np.arange(n) * num_codes + codes] = 1.0
    return out


def _ridge_r2(x_tr, y_tr, x_te, y_te, l2: float) -> np.ndarray:
    mu_x, mu_y = x_tr.mean(0), y_tr.mean(0)
    a, b = x_tr - mu_x, y_tr - mu_y
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ b)  # (F, A)
    pred = (x_te - mu_x) @ w + mu_y
    sst = ((y_te - y_te.mean(0)) ** 2).sum(0)
    return 1.0 - ((y_te - pred) ** 2).sum(0) / np.maximum(sst, 1e-12)  # (A,)


def linear_probe(codes: np.ndarray, actions: np.ndarray, episodes: np.ndarray, num_codes: int,
                 test_fraction: float = 0.25, l2: float = 1e-2, seed: int = 0) -> ProbeResult:
    """codes (N, n) int, actions (N, A) float (finite), episodes (N,) int -> ProbeResult on held-out episodes."""
    actions = np.asarray(actions, np.float64).reshape(len(actions), -1)
    episodes = np.asarray(episodes)
    if not (len(codes) == len(actions) == len(episodes)):
        raise ValueError(f"codes, actions, episodes differ in length: {len(codes)}, {len(actions)}, {len(episodes)}")
    if not np.isfinite(actions).all():
        raise ValueError("actions hold NaN/Inf: the probe needs the true actions (probe.action of action-free rollouts)")
    rng = np.random.default_rng(seed)
    eps = np.unique(episodes)
    if len(eps) < 2:
        raise ValueError("the probe needs at least 2 episodes (it holds whole episodes out)")
    n_test = min(len(eps) - 1, max(1, round(test_fraction * len(eps))))
    test = np.isin(episodes, rng.permutation(eps)[:n_test])
    x = one_hot(codes, num_codes)

    def r2(feats: np.ndarray) -> np.ndarray:
        return _ridge_r2(feats[~test], actions[~test], feats[test], actions[test], l2)

    per_dim = r2(x)
    shuffled = r2(x[rng.permutation(len(x))])
    random = r2(one_hot(rng.integers(0, num_codes, np.shape(codes)), num_codes))
    return ProbeResult(r2=float(per_dim.mean()), r2_per_dim=[float(v) for v in per_dim],
                       r2_shuffled=float(shuffled.mean()), r2_random=float(random.mean()),
                       n_train=int((~test).sum()), n_test=int(test.sum()), codes_used=int((x.sum(0) > 0).sum()))
