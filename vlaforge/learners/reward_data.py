"""Labeled data for the reward model, from demonstrations (LeRobot v3) and from rollout TensorDicts.

Both sources become ``RMEpisode``s whose frame t shows state s_t and carries the success predicate OF
THAT STATE. A LeRobot row holds observation t and ``next.success`` = success AFTER its action, so a
demo frame's own flag is the previous row's ``next.success`` (frame 0: False); demos that stop at the
first success therefore hold no success frame (``outcome`` still says they succeeded). A rollout step
holds ("next", image) with ("next", success): exact pairs.

    split_episodes        episodes -> train / held-out, stratified by (task, outcome)
    build_success_set     -> TensorDict [N]: IMAGE, STATE, INSTRUCTION, RM_TARGET, EPISODE/FRAME_INDEX
    build_eval_set        -> the same over EVERY frame, target = the exact flag (held-out AUROC)
    build_preference_set  -> TensorDict [P, 2, L]: segment pairs, index 0 of dim 1 = the preferred one
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.data import format as F
from vlaforge.data.reader import DatasetReader
from vlaforge.policies.reward_config import RewardModelConfig

log = logging.getLogger(__name__)


@dataclass
class RMEpisode:
    image: torch.Tensor  # uint8 (T, V, H, W, 3): frame t shows state s_t
    state: torch.Tensor  # float32 (T, S)
    success: torch.Tensor  # bool (T,): the success predicate holds in frame t's state
    outcome: bool  # the episode reached success (possibly right after its last frame: demos stop there)
    complete: bool  # the episode ended (demo end, terminated, truncated); False: cut by the rollout window
    instruction: str
    task: str  # task name (env task for Meta-World); preference pairs compare episodes of one task
    source: str  # "demo" | "rollout"

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_frame(self) -> int | None:
        """First frame showing success; len(self) when success came after the last frame; None: no success."""
        hits = torch.nonzero(self.success).flatten()
        return int(hits[0]) if len(hits) else (len(self) if self.outcome else None)


# -- sources --------------------------------------------------------------------------------------
def episodes_from_dataset(root: str | Path, episodes: Sequence[int] | None = None,
                          cameras: Sequence[str] | None = None, skip_bad: bool = False) -> list[RMEpisode]:
    """Episodes of a LeRobot v3 dataset that has ``next.success`` (vlaforge demos do). ``cameras``:
    camera names or feature keys in V order (default: all). Task = the ``env_task`` column if present.
    ``skip_bad`` (data.skip_bad_episodes): drop episodes of unreadable files (logged) instead of failing."""
    reader = DatasetReader(root)
    if F.SUCCESS_KEY not in reader.features:
        raise KeyError(f"{reader.root}: no {F.SUCCESS_KEY!r} feature; the reward model needs per-frame success "
                       f"flags (features: {sorted(reader.features)})")
    cams = list(reader.camera_keys) if cameras is None else [
        c if c in reader.camera_keys else F.IMAGE_PREFIX + c for c in cameras]
    data = reader.load(episodes, cameras=cams, skip_bad=skip_bad)
    if reader.bad_episodes:
        log.warning("reward data: skipped %d unreadable episode(s) of %s: %s", len(reader.bad_episodes), reader.root,
                    "; ".join(f"{e}: {why}" for e, why in sorted(reader.bad_episodes.items())[:5]))
    env_task = dict(zip(reader.episodes.index, reader.episodes["env_task"])) if "env_task" in reader.episodes else {}
    ep_col = data["episode_index"]
    out = []
    for ep in sorted({int(e) for e in ep_col}):
        rows = np.flatnonzero(ep_col == ep)
        nxt = torch.from_numpy(np.asarray(data[F.SUCCESS_KEY][rows]).reshape(-1).astype(bool))  # (T,) after action t
        state = data.get(F.STATE_KEY)
        state = np.zeros((len(rows), 1), np.float32) if state is None else state[rows].reshape(len(rows), -1)
        instruction = reader.tasks[int(data["task_index"][rows[0]])]
        out.append(RMEpisode(
            image=torch.from_numpy(np.stack([data[c][rows] for c in cams], axis=1)),  # (T, V, H, W, 3)
            state=torch.from_numpy(state.astype(np.float32)),
            success=torch.cat([torch.zeros(1, dtype=torch.bool), nxt[:-1]]),  # frame t's own state: row t-1's flag
            outcome=bool(nxt.any()), complete=True, instruction=instruction,
            task=str(env_task.get(ep, instruction)), source="demo"))
    return out


def episodes_from_rollouts(trajs: TensorDictBase | Sequence[TensorDictBase], task_names: Sequence[str] | None = None
                           ) -> list[RMEpisode]:
    """Rollout trajectories [B, T] -> WHOLE episodes (a row splits after every done step). Needs ("next",
    image), ("next", success), ("next", done) and the observation's instruction; ``task_names`` maps task_index
    to names (e.g. vlaforge.envs.ALL_TASKS) so that rollouts and demos of one task match. With action chunks
    ("next", success) means success at any executed step while the image is the chunk's last observation:
    the same frame whenever success ends the episode (terminate_on_success, the default).

    A list of trajectories is CONSECUTIVE sync-mode samples of one pool: row b of sample i+1 continues the
    episode that row b of sample i left running (the same simulator; the pool orders results by actor
    rank), so such fragments are joined into one episode. Held-out splits are by episode, and one episode
    cut by the sample window must not land on both sides (it would leak its frames). If an actor restarted
    in between, the join puts two episodes together: conservative for the split, per-frame labels unchanged."""
    out: list[RMEpisode] = []
    open_: dict[int, RMEpisode] = {}  # row -> its episode still running at the end of the previous sample
    rows = None
    for traj in ([trajs] if isinstance(trajs, TensorDictBase) else list(trajs)):
        frags = _row_fragments(traj, task_names)
        if rows is not None and len(frags) != rows:
            raise ValueError(f"episodes_from_rollouts: consecutive samples must have the same rows (the same "
                             f"simulators), got {rows} then {len(frags)}")
        rows = len(frags)
        for row, eps in frags.items():
            if row in open_ and eps and eps[0][0] == 0:  # continues the previous sample's running episode
                head = open_.pop(row)
                first = eps[0][1]
                eps[0] = (0, RMEpisode(image=torch.cat([head.image, first.image]), state=torch.cat([head.state, first.state]),
                                       success=torch.cat([head.success, first.success]),
                                       outcome=head.outcome or first.outcome, complete=first.complete,
                                       instruction=head.instruction, task=head.task, source="rollout"))
            for _, ep in eps[:-1]:
                out.append(ep)
            last = eps[-1][1]
            if last.complete:
                out.append(last)
            else:
                open_[row] = last
    out.extend(open_[row] for row in sorted(open_))  # still running at the end: incomplete episodes
    return out


def _row_fragments(traj: TensorDictBase, task_names: Sequence[str] | None) -> dict[int, list[tuple[int, RMEpisode]]]:
    """One trajectory [B, T] -> {row: [(first decision index, episode fragment), ...]} in time order."""
    need = [(keys.NEXT, *keys.IMAGE), (keys.NEXT, keys.SUCCESS), (keys.NEXT, keys.DONE), keys.INSTRUCTION]
    missing = [k for k in need if k not in traj.keys(True)]
    if missing or traj.batch_dims != 2:
        raise KeyError(f"rollout TensorDict must be [B, T] with {need} (the success flag of step t describes the "
                       f"NEXT observation, so its image must be kept); batch {tuple(traj.batch_size)}, missing {missing}")
    nxt = traj.get(keys.NEXT)
    image = nxt.get(keys.IMAGE)  # (B, T, V, H, W, 3)
    state_src = nxt if keys.STATE in nxt.keys(True) else (traj if keys.STATE in traj.keys(True) else None)
    state = state_src.get(keys.STATE).float() if state_src is not None else torch.zeros(*traj.batch_size, 1)
    success = nxt.get(keys.SUCCESS).reshape(traj.batch_size).bool()  # (B, T)
    done = nxt.get(keys.DONE).reshape(traj.batch_size).bool()  # (B, T)
    instr = traj.get(keys.INSTRUCTION)
    instr = instr.tolist() if hasattr(instr, "tolist") else instr  # B lists of T strings
    task_idx = traj.get(keys.TASK_INDEX) if keys.TASK_INDEX in traj.keys(True) else None
    out: dict[int, list[tuple[int, RMEpisode]]] = {}
    b, t = traj.batch_size
    for row in range(b):
        ends = [i + 1 for i in range(t) if done[row, i]]
        starts = [0] + ends
        out[row] = []
        for lo, hi in zip(starts, ends + [t]):
            if hi <= lo:
                continue
            if task_idx is None:
                task = instr[row][lo]
            else:
                k = int(task_idx[row, lo])
                task = task_names[k] if task_names is not None else f"task-{k}"
            out[row].append((lo, RMEpisode(image=image[row, lo:hi], state=state[row, lo:hi].reshape(hi - lo, -1),
                                           success=success[row, lo:hi].clone(), outcome=bool(success[row, lo:hi].any()),
                                           complete=bool(done[row, hi - 1]), instruction=str(instr[row][lo]), task=task,
                                           source="rollout")))
    return out


def split_episodes(episodes: Sequence[RMEpisode], heldout_fraction: float, seed: int = 0
                   ) -> tuple[list[RMEpisode], list[RMEpisode]]:
    """Held-out episodes per (task, outcome) group, so both halves see successes and failures of every task.
    The unit is the episode: each RMEpisode goes wholly to one side (rollouts: episodes_from_rollouts joins
    an episode's fragments across consecutive samples first, so none is split by the sample window)."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault((ep.task, ep.outcome), []).append(i)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for _, idx in sorted(groups.items()):
        n = round(heldout_fraction * len(idx))
        if heldout_fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)  # at least one on each side
        held.update(rng.permutation(idx)[:n].tolist())
    return [e for i, e in enumerate(episodes) if i not in held], [e for i, e in enumerate(episodes) if i in held]


# -- labels ---------------------------------------------------------------------------------------
def frame_targets(ep: RMEpisode, cfg: RewardModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (frame indices kept, float targets in [0, 1]) under cfg.demo_labels (module doc of the config)."""
    n, ts = len(ep), ep.success_frame
    t = torch.arange(n)
    if ts is None:  # failed (or not yet successful): the predicate is false on every frame
        return t, torch.zeros(n)
    before = t < ts
    if cfg.demo_labels == "progress":
        keep = before | ep.success  # frames after success where the predicate dropped again are left out
        target = torch.where(before, t.float() / max(ts, 1), torch.ones(n))
    else:
        neg = t < math.floor(cfg.negative_fraction * ts)
        keep = neg | ep.success
        target = ep.success.float()
    return t[keep], target[keep]


def _instructions(episodes: Sequence[RMEpisode], ep_of_item: Sequence[int], rng: np.random.Generator | None) -> list[str]:
    """Each item's instruction; with ``rng``, one drawn from ALL instructions of its episode's task in the
    set (paraphrase mixing): with few episodes a paraphrase seen only in successful (or only in failed)
    ones is a perfect shortcut to the label -- measured on Meta-World, held-out AUROC spread 0.23-0.998
    over seeds with the episodes' own paraphrases, 0.99+ with one instruction per task."""
    if rng is None:
        return [episodes[e].instruction for e in ep_of_item]
    pool: dict[str, list[str]] = {}
    for ep in episodes:
        pool.setdefault(ep.task, [])
        if ep.instruction not in pool[ep.task]:
            pool[ep.task].append(ep.instruction)
    return [pool[episodes[e].task][int(rng.integers(len(pool[episodes[e].task])))] for e in ep_of_item]


def _frames(episodes: Sequence[RMEpisode], picks: list[tuple[int, torch.Tensor, torch.Tensor]],
            rng: np.random.Generator | None = None) -> TensorDict:
    """[(episode position, frame indices (n,), targets (n,)), ...] -> TensorDict [N]."""
    for field in ("image", "state"):
        shapes = {tuple(getattr(episodes[e], field).shape[1:]) for e, _, _ in picks}
        if len(shapes) > 1:
            raise ValueError(f"episodes differ in {field} shape {sorted(shapes)}: use one camera set / state layout")
    td = TensorDict({
        keys.IMAGE: torch.cat([episodes[e].image[f] for e, f, _ in picks]),  # (N, V, H, W, 3)
        keys.STATE: torch.cat([episodes[e].state[f] for e, f, _ in picks]),  # (N, S)
        keys.RM_TARGET: torch.cat([y for _, _, y in picks]).float(),  # (N,)
        keys.EPISODE_INDEX: torch.cat([torch.full((len(f),), e, dtype=torch.int64) for e, f, _ in picks]),
        keys.FRAME_INDEX: torch.cat([f for _, f, _ in picks]).long(),
    }, batch_size=[sum(len(f) for _, f, _ in picks)])
    td.set(keys.INSTRUCTION, NonTensorStack.from_list(_instructions(episodes, [e for e, f, _ in picks for _ in f], rng)))
    return td


def build_success_set(episodes: Sequence[RMEpisode], cfg: RewardModelConfig, seed: int = 0) -> TensorDict:
    """Labeled frames; with cfg.balance, positives (target >= 0.5) and negatives are drawn to equal counts
    (the minority class oversampled), at most cfg.max_frames_per_class each."""
    picks = [(i, *frame_targets(ep, cfg)) for i, ep in enumerate(episodes)]
    picks = [p for p in picks if len(p[1])]
    if not picks:
        raise ValueError("no labeled frames: the episode list is empty")
    td = _frames(episodes, picks, np.random.default_rng(seed) if cfg.mix_paraphrases else None)
    if not cfg.balance:
        return td
    pos = torch.nonzero(td.get(keys.RM_TARGET) >= 0.5).flatten()
    neg = torch.nonzero(td.get(keys.RM_TARGET) < 0.5).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            f"cannot balance: {len(pos)} positive and {len(neg)} negative frames. Demos that stop at their first "
            "success show no success frame: set demos.success_extra_steps > 0, or add successful rollouts; "
            "failures come from failed rollouts or from the early frames of demos")
    g = torch.Generator().manual_seed(seed)
    k = min(max(len(pos), len(neg)), cfg.max_frames_per_class)

    def draw(idx: torch.Tensor) -> torch.Tensor:
        if len(idx) >= k:
            return idx[torch.randperm(len(idx), generator=g)[:k]]
        extra = idx[torch.randint(len(idx), (k - len(idx),), generator=g)]  # oversample the minority
        return torch.cat([idx, extra])

    order = torch.cat([draw(pos), draw(neg)])
    return td[order[torch.randperm(len(order), generator=g)]]


def build_eval_set(episodes: Sequence[RMEpisode]) -> TensorDict:
    """Every frame with its exact success flag as target (held-out AUROC / accuracy)."""
    return _frames(episodes, [(i, torch.arange(len(ep)), ep.success.float()) for i, ep in enumerate(episodes)])


def build_preference_set(episodes: Sequence[RMEpisode], cfg: RewardModelConfig, seed: int = 0) -> TensorDict:
    """cfg.num_pairs segment pairs of cfg.segment_length frames, TensorDict [P, 2, L], preferred first:
    "progress" pairs (a later over an earlier, disjoint window of one successful episode) and "outcome"
    pairs (a window of a successful episode that reaches its success frame over any window of a failed,
    complete episode of the same task)."""
    L, rng = cfg.segment_length, np.random.default_rng(seed)
    wins = [i for i, ep in enumerate(episodes) if ep.outcome and len(ep) >= L]
    fails = [i for i, ep in enumerate(episodes) if not ep.outcome and ep.complete and len(ep) >= L]
    progress = [i for i in wins if len(episodes[i]) >= 2 * L]
    cross = [(w, [f for f in fails if episodes[f].task == episodes[w].task]) for w in wins]
    cross = [(w, fs) for w, fs in cross if fs]
    n_prog = round(cfg.num_pairs * cfg.progress_pair_fraction) if cross else cfg.num_pairs
    n_prog = n_prog if progress else 0
    n_cross = cfg.num_pairs - n_prog
    if (n_prog and not progress) or (n_cross and not cross):
        raise ValueError(f"no preference pairs: {len(wins)} successful and {len(fails)} failed complete episodes "
                         f"of >= {L} frames; outcome pairs need both of one task, progress pairs a successful "
                         f"episode of >= {2 * L} frames")
    pairs: list[tuple[int, int, int, int]] = []  # (preferred ep, its start, other ep, its start)
    for _ in range(n_prog):
        e = int(rng.choice(progress))
        a = int(rng.integers(0, len(episodes[e]) - 2 * L + 1))
        pairs.append((e, int(rng.integers(a + L, len(episodes[e]) - L + 1)), e, a))
    for _ in range(n_cross):
        w, fs = cross[int(rng.integers(len(cross)))]
        n, ts = len(episodes[w]), min(episodes[w].success_frame, len(episodes[w]) - 1)
        lo = max(0, ts - L + 1)  # windows that end at or after the first success frame (demos: the last one)
        f = int(rng.choice(fs))
        pairs.append((w, int(rng.integers(lo, max(lo, n - L) + 1)), f, int(rng.integers(0, len(episodes[f]) - L + 1))))

    def seg(e: int, s: int, field: str) -> torch.Tensor:
        return getattr(episodes[e], field)[s : s + L]

    td = TensorDict({
        keys.IMAGE: torch.stack([torch.stack([seg(a, sa, "image"), seg(b, sb, "image")]) for a, sa, b, sb in pairs]),
        keys.STATE: torch.stack([torch.stack([seg(a, sa, "state"), seg(b, sb, "state")]) for a, sa, b, sb in pairs]),
        keys.EPISODE_INDEX: torch.tensor([[a, b] for a, _, b, _ in pairs]).unsqueeze(-1).expand(-1, -1, L).clone(),
        keys.FRAME_INDEX: torch.tensor([[sa, sb] for _, sa, _, sb in pairs]).unsqueeze(-1) + torch.arange(L),
    }, batch_size=[len(pairs), 2, L])
    instr = _instructions(episodes, [e for a, _, b, _ in pairs for e in (a, b)], rng if cfg.mix_paraphrases else None)
    td.set(keys.INSTRUCTION, NonTensorStack.from_list([[[instr[2 * i]] * L, [instr[2 * i + 1]] * L] for i in range(len(pairs))]))
    return td


def build_reward_data(cfg: RewardModelConfig, datasets: Sequence[str | Path] = (), rollouts: Sequence[TensorDictBase] = (),
                      task_names: Sequence[str] | None = None, seed: int = 0,
                      skip_bad_episodes: bool = False) -> tuple[TensorDict, TensorDict | None]:
    """The driver's one call: episodes of LeRobot ``datasets`` and rollout trajectories [B, T] -> (training
    set, held-out set or None). Held-out = cfg.heldout_fraction of the episodes (split_episodes); kind
    "success": balanced frames / every held-out frame with its exact flag; "preference": pairs of both."""
    episodes = [ep for root in datasets for ep in episodes_from_dataset(root, skip_bad=skip_bad_episodes)]
    episodes += episodes_from_rollouts(list(rollouts), task_names) if rollouts else []  # consecutive samples joined
    if not episodes:
        raise ValueError("build_reward_data: no episodes (give demonstration datasets and/or rollouts)")
    train, held = split_episodes(episodes, cfg.heldout_fraction, seed)
    if cfg.kind == "preference":
        return build_preference_set(train, cfg, seed), (build_preference_set(held, cfg, seed + 1) if held else None)
    return build_success_set(train, cfg, seed), (build_eval_set(held) if held else None)
