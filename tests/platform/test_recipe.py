"""Recipe validation and every error path: file, line, key path, expectation, closest key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlaforge.errors import RecipeError
from vlaforge.platform.recipe import dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    r = load_recipe(recipe)
    assert r.name


def test_misspelt_key_names_file_line_and_closest_key(tmp_path):
    f = write(tmp_path, "r.yaml", "name: x\ntrain:\n  steps: 3\n  lrr: 0.1\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    msg = str(e.value)
    assert f"{f.resolve()}:4: train.lrr: unknown key" in msg
    assert "Did you mean 'lr'?" in msg


def test_wrong_value_names_expectation(tmp_path):
    f = write(tmp_path, "r.yaml", "envs:\n  image_size: 8\n  state: pixels\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    msg = str(e.value)
    assert ":2: envs.image_size: Input should be greater than or equal to 16 (got 8)" in msg
    assert ":3: envs.state: Input should be 'proprio', 'proprio_goal' or 'full' (got 'pixels')" in msg


def test_python_tags_are_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    f = write(tmp_path, "r.yaml", f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError, match=r"r.yaml:1: YAML error: could not determine a constructor"):
        load_recipe(f)
    assert not marker.exists()


def test_yaml_syntax_error_has_line(tmp_path):
    f = write(tmp_path, "r.yaml", "name: x\ntrain: [1,\n")
    with pytest.raises(RecipeError, match=r"r.yaml:3: YAML error"):
        load_recipe(f)


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    f = write(tmp_path, "r.yaml", "extends: base.yaml\n")
    with pytest.raises(RecipeError, match=r"r.yaml:1: extends: base recipe .*base.yaml not found"):
        load_recipe(f)


def test_extends_merges_and_errors_point_at_the_right_file(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ntrain:\n  steps: 10\n  lr: 0.5\n  batch_sise: 4\n")
    f = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain:\n  steps: 20\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(f)
    assert "base.yaml:5: train.batch_sise: unknown key. Did you mean 'batch_size'?" in str(e.value)
    write(tmp_path, "base.yaml", "name: base\ntrain:\n  steps: 10\n  lr: 0.5\n")
    r = load_recipe(f)
    assert (r.name, r.train.steps, r.train.lr) == ("base", 20, 0.5)


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_overrides(tmp_path):
    f = write(tmp_path, "r.yaml", "train:\n  lr: 0.1\n")
    r = load_recipe(f, ["train.lr=3e-4", "envs.tasks=[reach-v3,push-v3]", "eval.enabled=false"])
    assert r.train.lr == pytest.approx(3e-4)
    assert r.envs.tasks == ["reach-v3", "push-v3"]
    assert r.eval.enabled is False
    with pytest.raises(RecipeError, match=r"command line override 'train.lr=abc': train.lr: Input should be a valid number"):
        load_recipe(f, ["train.lr=abc"])
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        load_recipe(f, ["train.lr"])
    with pytest.raises(RecipeError, match="Did you mean 'steps'"):
        load_recipe(f, ["train.stepz=3"])


def test_cross_field_validation(tmp_path):
    f = write(tmp_path, "r.yaml", "policy:\n  chunk_size: 4\n  n_action_steps: 8\n")
    with pytest.raises(RecipeError, match=r"r.yaml:1: policy: Value error, n_action_steps \(8\) cannot exceed chunk_size \(4\)"):
        load_recipe(f)


def test_duplicate_keys_rejected(tmp_path):
    f = write(tmp_path, "r.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(RecipeError, match=r"r.yaml:3: train.lr: key given twice"):
        load_recipe(f)


def test_dump_round_trips(tmp_path):
    r = load_recipe(ROOT / "configs" / "quickstart.yaml", ["train.steps=7"])
    f = write(tmp_path, "resolved.yaml", dump_recipe(r))
    assert load_recipe(f) == r


def test_unknown_task_is_caught_at_check_time(tmp_path):
    f = write(tmp_path, "r.yaml", "envs:\n  tasks:\n    - reach-v3\n    - rech-v3\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: envs.tasks.1: Unknown Meta-World task .*Did you mean 'reach-v3'"):
        load_recipe(f)
    assert load_recipe(f, ["envs.tasks=[MT10]"]).envs.tasks == ["MT10"]


def test_stage_set_blocks_are_validated_with_lines(tmp_path):
    text = ("ray:\n  num_cpus: 4\nstages:\n  - name: bc\n  - name: ppo\n    kind: ppo\n    set:\n      train:\n"
            "        objective: ppo\n        lr: 0.5\n")
    f = write(tmp_path, "r.yaml", text)
    from vlaforge.platform.recipe import stage_recipe

    r = load_recipe(f)
    assert stage_recipe(r, 1).train.lr == 0.5 and stage_recipe(r, 0).train.lr == r.train.lr
    write(tmp_path, "r.yaml", text.replace("lr: 0.5", "lrr: 0.5"))
    with pytest.raises(RecipeError, match=r"(?s)stage 'ppo', stages.1.set.*r.yaml:10: train.lrr: unknown key. Did you mean 'lr'"):
        load_recipe(f)
    write(tmp_path, "r.yaml", "stages:\n  - name: a\n  - name: a\n")
    with pytest.raises(RecipeError, match="stage names must be unique"):
        load_recipe(f)
