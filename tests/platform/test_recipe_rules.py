"""`vlaforge recipe check` through the real CLI entry: every cross-field rule, registry name and YAML hazard
gives exit code 2 and one line naming the file, line, key path, value and what is expected -- no traceback.
No Ray: these run in a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlaforge.errors import RecipeError
from vlaforge.platform import cli
from vlaforge.platform.recipe import load_recipe, stage_recipe

ROOT = Path(__file__).resolve().parents[2]

# A valid two-stage recipe that fits its own embedded cluster; each case below extends it (line 1 of a case is
# its `extends:`, so a case's first key is on line 2).
BASE = """\
name: base
ray:
  num_cpus: 4
envs:
  tasks: [reach-v3]
  max_episode_steps: 100
policy:
  chunk_size: 8
  n_action_steps: 4
train:
  num_learners: 2
  batch_size: 8
rollout:
  num_actors: 2
  envs_per_actor: 2
stages:
  - name: bc
  - name: ppo
    kind: ppo
"""

# lam -> latent_pretrain -> bc -> ppo (8 lines)
LATENT_CHAIN = ("stages:\n  - name: lam\n    kind: lam\n  - name: lp\n    kind: latent_pretrain\n  - name: bc\n"
                "  - name: ppo\n    kind: ppo\n")
PPO_STAGES = "stages:\n  - name: bc\n  - name: rl\n    kind: {kind}\n    set:\n{set}"

# (id, the case's YAML after `extends: base.yaml`, "<line>: <key path>", what the message must say)
CASES = [
    ("batch-vs-ranks", "train:\n  batch_size: 9\n", "3: train.batch_size = 9",
     "must be a multiple of train.num_learners (2)"),
    ("lr-inf", "train:\n  lr: .inf\n", "3: train.lr", "Input should be a finite number"),
    ("dropout-nan", "policy:\n  dropout: .nan\n", "3: policy.dropout", "finite number"),
    ("clip-inf-in-stage-set", PPO_STAGES.format(kind="ppo", set="      train:\n        ppo:\n          clip_epsilon: .inf\n"),
     "9: train.ppo.clip_epsilon", "finite number"),
    ("name-dotdot", "name: ..\n", "2: name", "not a folder name"),
    ("name-absolute", "name: /etc/cron.d\n", "2: name", "not a folder name"),
    ("name-hidden", "name: .hidden\n", "2: name", "not a folder name"),
    ("stage-name-slash", "stages:\n  - name: a/../../b\n", "3: stages.0.name", "not a folder name"),
    ("objective-unknown", "train:\n  objective: ppoo\n", "3: train.objective = 'ppoo'",
     "unknown objective. Did you mean 'ppo'?"),
    ("objective-vs-stage-kind", PPO_STAGES.format(kind="ppo", set="      train:\n        objective: grpo\n"),
     "8: train.objective = 'grpo'", "a stage of kind 'ppo' runs train.objective 'ppo'; objective 'grpo' runs in a stage of kind grpo"),
    ("objective-rl-in-bc-stage", "train:\n  objective: ppo\n", "3: train.objective = 'ppo'", "stage of kind 'bc' runs"),
    ("stage-kind-unknown", "stages:\n  - name: a\n    kind: bcc\n", "4: stages.0.kind = 'bcc'",
     "unknown stage kind. Did you mean 'bc'?"),
    ("policy-type", "policy:\n  type: vlaa\n", "3: policy.type = 'vlaa'", "unknown policy type. Did you mean 'vla'?"),
    ("vision-type", "policy:\n  vision:\n    type: cnnn\n", "4: policy.vision.type = 'cnnn'",
     "unknown vision backbone. Did you mean 'cnn'? Registered: cnn"),
    ("language-type", "policy:\n  language:\n    type: hashd\n", "4: policy.language.type = 'hashd'",
     "unknown language backbone. Did you mean 'hashed'?"),
    ("head-type", "policy:\n  head:\n    type: gausian\n", "4: policy.head.type = 'gausian'",
     "unknown action head. Did you mean 'gaussian'?"),
    ("rm-vision-type", "reward_model:\n  vision:\n    type: vit\n", "4: reward_model.vision.type = 'vit'",
     "unknown vision backbone"),
    ("action-norm", "policy:\n  action_norm: minmax\n", "3: policy.action_norm = 'minmax'",
     "unknown action normaliser. Did you mean 'min_max'?"),
    ("env-backend", "envs:\n  backend: metaworl\n", "3: envs.backend = 'metaworl'", "unknown env backend. Did you mean 'metaworld'?"),
    ("task", "envs:\n  tasks: [reach-v3, pushh-v3]\n", "3: envs.tasks.1", "Did you mean 'push-v3'?"),
    ("grpo-score", "train:\n  grpo:\n    score: sucess\n", "4: train.grpo.score = 'sucess'",
     "unknown GRPO trajectory score. Did you mean 'success'?"),
    ("broadcast-unknown", "rollout:\n  broadcast: nccl\n", "3: rollout.broadcast = 'nccl'", "unknown weight broadcast"),
    ("broadcast-backend-unknown", "rollout:\n  broadcast: collective\n  broadcast_backend: mpi\n",
     "4: rollout.broadcast_backend", "'auto', 'gloo' or 'nccl' (got 'mpi')"),
    ("cpus-vs-cluster", "rollout:\n  num_actors: 3\n", "3: rollout.num_actors = 3",
     "train.num_learners (2) x 1 CPU + rollout.num_actors (3) x 1 CPU = 5 CPUs at once, more than the embedded Ray "
     "cluster has (ray.num_cpus = 4)"),
    ("cpus-eval-workers", "eval:\n  num_workers: 6\n", "3: eval.num_workers = 6", "= 6 CPUs at once"),
    ("cpus-demo-workers", "demos:\n  num_workers: 5\n", "3: demos.num_workers = 5", "= 5 CPUs at once"),
    ("chunk-vs-episode", "envs:\n  max_episode_steps: 6\n", "base.yaml:8: policy.chunk_size = 8",
     "cannot exceed envs.max_episode_steps (6)"),
    ("n-action-steps-vs-chunk", "policy:\n  n_action_steps: 9\n", "2: policy", "n_action_steps (9) cannot exceed chunk_size (8)"),
    ("rollout-rows-vs-ranks", "ray:\n  num_cpus: 8\ntrain:\n  num_learners: 4\nrollout:\n  num_actors: 1\n",
     "7: rollout.num_actors", "= 2 rollout rows per update cannot be split over train.num_learners (4)"),
    ("grpo-group-size", PPO_STAGES.format(kind="grpo", set="      rollout:\n        steps_per_sample: 25\n"),
     "7: rollout.group_size = 1", "objective 'grpo' needs G >= train.grpo.min_group_size"),
    ("grpo-horizon", PPO_STAGES.format(kind="grpo", set="      rollout:\n        group_size: 2\n        steps_per_sample: 10\n"),
     "9: rollout.steps_per_sample = 10", "would cut episodes of envs.max_episode_steps = 100 short; use steps_per_sample >= 25"),
    ("ppo-async", PPO_STAGES.format(kind="ppo", set="      rollout:\n        mode: async\n"),
     "8: rollout.mode = 'async'", "PPO runs with rollout.mode 'sync' only"),
    ("ppo-episode-rows", PPO_STAGES.format(kind="ppo", set="      rollout:\n        episode_rows: true\n"),
     "7: rollout.steps_per_sample = 16", "makes each row one whole episode: steps_per_sample x policy.n_action_steps = 64 env steps would cut episodes of envs.max_episode_steps = 100 short; use steps_per_sample >= 25"),
    ("clip-actions-mean-std", "policy:\n  action_norm: mean_std\n  head:\n    clip_actions: true\n",
     "5: policy.head.clip_actions = True", "only with policy.action_norm 'min_max'"),
    ("std-state-other-head", "policy:\n  head:\n    type: flow\n    std: state\n", "5: policy.head.std = 'state'",
     "is an option of policy.head.type 'gaussian'"),
    ("critic-unknown", "policy:\n  critic: stat\n", "3: policy.critic = 'stat'", "unknown critic. Did you mean 'state'?"),
    ("eval-validation-overlaps-demos", "eval:\n  validation_seed_offset: 5\n", "3: eval.validation_seed_offset = 5",
     "overlap the demo seeds"),
    ("rl-stage-first", "stages:\n  - name: rl\n    kind: ppo\n", "4: stages.0.kind = 'ppo'",
     "the first stage has none: put a bc stage before it"),
    ("rl-stage-from-scratch", "stages:\n  - name: bc\n  - name: rl\n    kind: grpo\n    init: scratch\n",
     "6: stages.1.init = 'scratch'", "needs a policy to start from"),
    ("reward-model-missing", "reward_model:\n  enabled: true\n", "3: reward_model.enabled = True",
     "set reward_model.model_dir or put a reward_model stage before it"),
    ("rm-refresh-async", "reward_model:\n  enabled: true\n  model_dir: /tmp\n  refresh:\n    every: 5\nrollout:\n  mode: async\n",
     "8: rollout.mode = 'async'", "'sync' with reward_model.refresh.every > 0"),
    ("rm-refresh-never", "reward_model:\n  enabled: true\n  model_dir: /tmp\n  refresh:\n    every: 5000\n",
     "6: reward_model.refresh.every = 5000", "or it never refreshes"),
    ("rm-grpo-success", PPO_STAGES.format(kind="grpo", set="      reward_model:\n        enabled: true\n        model_dir: /tmp\n"
     "        mode: rm\n      rollout:\n        group_size: 2\n        steps_per_sample: 25\n"),
     "base.yaml:10: train.grpo.score", "'return' with reward_model.mode 'rm'"),
    ("heldout-none", "envs:\n  heldout_paraphrases: 0\neval:\n  instructions: heldout\n", "5: eval.instructions = 'heldout'",
     "needs envs.heldout_paraphrases >= 1"),
    ("heldout-too-many", "envs:\n  heldout_paraphrases: 5\n", "3: envs.heldout_paraphrases = 5", "at most 4"),
    ("eval-seeds-overlap", "eval:\n  seed_offset: 5\n", "3: eval.seed_offset = 5", "overlap the demo seeds"),
    ("data-path-missing", "data:\n  path: /nonexistent/dataset\n", "3: data.path = '/nonexistent/dataset'",
     "a LeRobot v3 dataset folder"),
    ("init-path-missing", "stages:\n  - name: rl\n    kind: ppo\n    init: /nonexistent/policy\n",
     "5: stages.0.init = '/nonexistent/policy'", "an existing policy / checkpoint / run folder"),
    ("stage-sets-ray", PPO_STAGES.format(kind="ppo", set="      ray:\n        num_cpus: 8\n"), "7: stages.1.set.ray",
     "a stage cannot set 'ray'"),
    ("wandb-mode", "logging:\n  wandb_mode: offlne\n", "3: logging.wandb_mode", "'offline', 'online' or 'disabled'"),
    ("removed-val-fraction", "data:\n  val_fraction: 0.1\n", "2: data", "data.val_fraction is not implemented"),
    ("zero-learners", "train:\n  num_learners: 0\n", "3: train.num_learners", "greater than or equal to 1"),
    # latent-action stages (platform/recipe_rules_latent.py)
    ("pretrain-without-lam", "stages:\n  - name: lp\n    kind: latent_pretrain\n  - name: bc\n",
     "4: stages.0.kind = 'latent_pretrain'", "put a lam stage before it, or set latent.lam_dir"),
    ("ppo-right-after-pretrain", "stages:\n  - name: lam\n    kind: lam\n  - name: lp\n    kind: latent_pretrain\n"
     "  - name: ppo\n    kind: ppo\n", "8: stages.2.kind = 'ppo'", "put a bc stage between them"),
    ("latent-head-in-the-policy-block", LATENT_CHAIN + "policy:\n  head:\n    type: latent\n",
     "12: policy.head.type = 'latent'", "latent_pretrain stages swap in the 'latent' head themselves"),
    ("gap-longer-than-episodes", LATENT_CHAIN + "latent:\n  gap: 100\n", "11: latent.gap = 100", "use gap < 100"),
    ("unknown-quantizer", LATENT_CHAIN + "latent:\n  model:\n    quantizer: vqvae\n",
     "12: latent.model.quantizer = 'vqvae'", "unknown latent quantizer"),
    ("fsq-levels", LATENT_CHAIN + "latent:\n  model:\n    quantizer: fsq\n    fsq_levels: [3, 3]\n", "11: latent.model",
     "their product must equal codebook_size"),
    ("video-path-missing", LATENT_CHAIN + "latent:\n  data_path: /nonexistent/video\n",
     "11: latent.data_path = '/nonexistent/video'", "a LeRobot v3 dataset folder"),
    ("lam-dir-missing", "stages:\n  - name: lp\n    kind: latent_pretrain\nlatent:\n  lam_dir: /nonexistent/lam\n",
     "6: latent.lam_dir = '/nonexistent/lam'", "a trained latent action model folder"),
    ("lam-objective", LATENT_CHAIN + "train:\n  objective: ppo\n", "11: train.objective = 'ppo'",
     "a stage of kind 'lam' runs train.objective 'latent_action'"),
]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def check(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["recipe", "check", "-q", *args])
    return code, capsys.readouterr().err


def test_base_is_valid(base, capsys):
    assert check(capsys, str(base / "base.yaml")) == (0, "")


def test_collective_broadcast_is_accepted_in_rl_stages(base, capsys):
    # wired into run_rl (platform/weight_sync.py); tests/platform/test_weight_sync.py runs it with gloo
    assert check(capsys, str(base / "base.yaml"), "rollout.broadcast=collective", "rollout.broadcast_backend=gloo") == (0, "")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_is_refused_with_file_line_and_key(base, capsys, case):
    _, text, where, what = case
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\n" + text)
    code, err = check(capsys, str(f))
    assert code == 2, err
    assert "Traceback" not in err
    at = f"{base}/{where}" if where.startswith("base.yaml") else f"{f}:{where}"
    assert at in err, err
    assert what in err, err


def test_the_latent_chain_passes(base, capsys):
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\n" + LATENT_CHAIN)
    assert check(capsys, str(f)) == (0, "")


def test_every_problem_is_listed_once_with_its_stages(base, capsys):
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\ntrain:\n  batch_size: 9\npolicy:\n  chunk_size: 200\n  n_action_steps: 4\n")
    code, err = check(capsys, str(f))
    assert code == 2
    assert err.count("train.batch_size = 9") == 1 and "[stages bc, ppo]" in err  # both stages, one line
    assert f"{f}:5: policy.chunk_size = 200" in err  # the second problem is reported in the same run


def test_override_errors_name_the_override(base, capsys):
    code, err = check(capsys, str(base / "base.yaml"), "train.lr=.nan", "stages=[{name: rl, kind: ppo}]")
    assert code == 2
    assert "command line override 'train.lr=.nan': train.lr: Input should be a finite number" in err
    code, err = check(capsys, str(base / "base.yaml"), "stages=[{name: rl, kind: ppo}]")
    assert "command line override 'stages=[{name: rl, kind: ppo}]': stages.0.kind = 'ppo'" in err  # not a stale line


def test_existing_cluster_skips_machine_checks_and_says_so(base, capsys):
    code, err = check(capsys, str(base / "base.yaml"), "ray.address=auto", "rollout.num_actors=64")
    assert code == 0
    assert "# note: ray.address is 'auto' (an existing cluster)" in err and "CPU and path checks were skipped" in err


def test_machine_cpus_used_without_num_cpus(base, capsys, monkeypatch):
    from vlaforge.platform import recipe_rules

    monkeypatch.setattr(recipe_rules, "machine_cpus", lambda: 3.0)
    code, err = check(capsys, str(base / "base.yaml"), "ray.num_cpus=null")
    assert code == 2 and "the 3 CPUs of this machine (ray.num_cpus: null)" in err
    monkeypatch.setattr(recipe_rules, "machine_cpus", lambda: 4.0)
    assert check(capsys, str(base / "base.yaml"), "ray.num_cpus=null")[0] == 0


def test_default_warp_render_path_needs_mujoco_warp(base, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mujoco_warp" else real(name, *a))
    code, err = check(capsys, str(base / "base.yaml"))  # render_backend unset: the default, warp
    assert code == 2 and "envs.render_backend = 'warp'" in err and "mujoco_warp cannot be imported" in err
    assert check(capsys, str(base / "base.yaml"), "envs.render_backend=plain")[0] == 0


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_pass_recipe_check(recipe, capsys):
    code, err = check(capsys, str(recipe))
    assert code == 0, err


# -- registries are the single source of truth -------------------------------------------------------------
def test_a_new_head_is_one_registration(base, capsys, monkeypatch):
    from vlaforge.policies.registry import HEAD_REGISTRY, register_head

    f = base / "r.yaml"
    f.write_text("extends: base.yaml\npolicy:\n  head:\n    type: my_test_head\n")
    code, err = check(capsys, str(f))
    assert code == 2 and "unknown action head" in err
    monkeypatch.setattr(HEAD_REGISTRY, "_entries", dict(HEAD_REGISTRY._entries))  # undone after the test
    register_head("my_test_head")(type("MyTestHead", (), {}))
    assert check(capsys, str(f)) == (0, "")


def test_a_new_stage_kind_and_objective_are_one_registration_each(base, capsys, monkeypatch):
    import vlaforge.learners as learners
    from vlaforge.platform import stages

    f = base / "r.yaml"
    f.write_text("extends: base.yaml\nstages:\n  - name: bc\n  - name: dist\n    kind: distill\n    set:\n"
                 "      train:\n        objective: my_distill\n")
    code, err = check(capsys, str(f))
    assert code == 2 and "stages.1.kind = 'distill': unknown stage kind" in err
    for d in (stages.STAGES, stages.STAGE_KINDS):
        monkeypatch.setitem(d, "distill", None)  # removed again after the test
    stages.register_stage("distill", objectives=("my_distill",), needs_policy=True, phases=(("learners",),))(lambda *a: None)
    code, err = check(capsys, str(f))
    assert code == 2 and "train.objective = 'my_distill': unknown objective" in err
    monkeypatch.setitem(learners.OBJECTIVES, "my_distill", lambda train, policy: None)
    assert check(capsys, str(f)) == (0, "")
    # ... and the stage's declared needs are checked like the built-in kinds'
    code, err = check(capsys, str(f), "stages.1.init=scratch")
    assert code == 2 and "stages.1.init = 'scratch': a distill stage needs a policy" in err


# -- YAML hazards: refused quickly, in bounded memory, naming the file ----------------------------------------
CYCLE = "name: run\nenvs: &e\n  tasks: [reach-v3]\n  extra: *e\n"
MERGE_CYCLE = "train: &t\n  lr: 0.1\n  <<: *t\n"


def bomb(levels: int = 12) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"  # 10**12 values once expanded


@pytest.mark.parametrize("text,what", [
    (CYCLE, "r.yaml:2: YAML anchor &e contains an alias to itself (at envs.extra)"),
    (MERGE_CYCLE, "r.yaml:1: YAML anchor &t contains an alias to itself"),
    (bomb(), "r.yaml: YAML expands to more than 20,000 values through its aliases"),
    ("name: " + "[" * 5000 + "]" * 5000 + "\n", "r.yaml:1: YAML nested deeper than 50 levels"),
], ids=["self-alias", "self-merge", "alias-bomb", "deep-nesting"])
def test_yaml_cycles_and_bombs_are_refused_quickly(tmp_path, text, what):
    load_recipe(ROOT / "configs" / "quickstart.yaml")  # imports done: time the YAML work alone
    f = tmp_path / "r.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert time.perf_counter() - t0 < 1.0
    assert what in str(e.value)


def test_alias_bomb_in_an_override_is_refused(tmp_path):
    payload = bomb().replace("\n", ", ").replace("a0: ", "{a0: ", 1).rstrip(", ") + "}"
    with pytest.raises(RecipeError, match="YAML expands to more than"):
        load_recipe(ROOT / "configs" / "quickstart.yaml", [f"stages.0.set={payload}"])


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    f = tmp_path / "r.yaml"
    f.write_text("extends: base.yaml\ntrain: &t\n  lr: 0.002\n  steps: 5\nenvs:\n  tasks: &tasks [reach-v3, push-v3]\n"
                 "  cameras: [corner]\nstages:\n  - name: bc\n  - name: ppo\n    kind: ppo\n    set:\n      train:\n"
                 "        <<: *t\n        steps: 7\n        lrr: 1\n")
    with pytest.raises(RecipeError, match=r"r.yaml:16: train.lrr: unknown key"):  # lines still point at the file
        load_recipe(f)
    f.write_text(f.read_text().replace("        lrr: 1\n", ""))
    r = load_recipe(f)
    s = stage_recipe(r, 1)
    assert (r.train.lr, r.train.steps, s.train.lr, s.train.steps, s.train.objective) == (0.002, 5, 0.002, 7, "bc")
    assert r.envs.tasks == ["reach-v3", "push-v3"]


def test_python_tags_still_refused(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(RecipeError, match="tags like !!python/object are not allowed"):
        load_recipe(f)


@pytest.mark.parametrize("text", [CYCLE, bomb()], ids=["cycle", "bomb"])
def test_cli_subprocess_refuses_yaml_hazards_without_traceback(tmp_path, text):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    p = subprocess.run([sys.executable, "-m", "vlaforge.platform.cli", "recipe", "check", str(f)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "RecursionError" not in p.stderr
    assert p.stderr.startswith(f"error: {f}")


def test_render_backend_literal_matches_its_registry():
    # The one Literal left beside a registry: reading RENDER_BACKENDS imports mujoco, which `recipe check` avoids.
    from typing import get_args

    from vlaforge.envs.config import EnvConfig
    from vlaforge.envs.render import RENDER_BACKENDS

    assert set(get_args(EnvConfig.model_fields["render_backend"].annotation)) == set(RENDER_BACKENDS)


def test_registrations_read_from_source_match_the_registries():
    """The fast path of the name checks (registrations read from the source with ast, no import) must agree
    with every registry once its modules are imported -- or recipe check would accept a name that fails later."""
    from vlaforge.platform.recipe_names import NAMED_FIELDS

    for path, named in NAMED_FIELDS.items():
        if named.layer is not None:
            assert named.written() == set(named.names()), ".".join(path)


def test_recipe_check_imports_no_torch():
    code = ("import sys; from vlaforge.platform.recipe import check_recipe; check_recipe('configs/ppo_metaworld_rm.yaml');"
            "heavy = [m for m in ('torch', 'tensordict', 'ray', 'mujoco', 'metaworld') if m in sys.modules];"
            "assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_train_refuses_before_any_work(base, capsys, tmp_path):
    f = base / "r.yaml"
    f.write_text("extends: base.yaml\ntrain:\n  batch_size: 9\n")
    run_dir = tmp_path / "run"
    for cmd in (["train", str(f), "--run-dir", str(run_dir)], ["demos", str(f)]):
        assert cli.main(cmd) == 2
        assert f"{f}:3: train.batch_size = 9" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing written, no Ray started
