"""Loading recipes: safe YAML with line numbers, ``extends:`` bases, command-line overrides, typed validation.

Every error names the file, the line, the key path, what was expected and, for a misspelt key, the
closest valid key -- and is raised as ``RecipeError`` (the CLI prints it and exits 2, no traceback).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vlaforge.errors import RecipeError
from vlaforge.platform.config import Recipe

Path_ = tuple[str, ...]  # a key path inside the recipe, e.g. ("train", "lr")


@dataclass
class Source:
    """Where each key path was set: (file, line) or a command-line override."""

    where: dict[Path_, str] = field(default_factory=dict)

    def locate(self, path: Path_) -> str:
        # the deepest known prefix: an error inside a list points at the list's key
        for n in range(len(path), -1, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return "<recipe>"


# -- YAML with line numbers ---------------------------------------------------------------------------
_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _node_to_py(node: yaml.Node, loader: yaml.SafeLoader, file: str, path: Path_, src: Source) -> Any:
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        # a tagged collection (e.g. !!python/object/apply): the safe constructor raises for it
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if not isinstance(key, str):
                raise RecipeError(f"{file}:{k_node.start_mark.line + 1}: keys must be strings, got {key!r}")
            if key in out:
                raise RecipeError(
                    f"{file}:{k_node.start_mark.line + 1}: {'.'.join(path + (key,))}: key given twice"
                )
            src.where[path + (key,)] = f"{file}:{k_node.start_mark.line + 1}"
            out[key] = _node_to_py(v_node, loader, file, path + (key,), src)
        return out
    if isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            src.where[path + (str(i),)] = f"{file}:{v.start_mark.line + 1}"
        return [_node_to_py(v, loader, file, path + (str(i),), src) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _load_yaml(file: Path, src: Source) -> dict[str, Any]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise RecipeError(f"{file}: recipe file not found") from None
    except OSError as e:
        raise RecipeError(f"{file}: cannot read recipe: {e.strerror}") from None
    loader = yaml.SafeLoader(text)  # safe: a !!python/object tag is an error, never code execution
    try:
        node = loader.get_single_node()
        data = {} if node is None else _node_to_py(node, loader, str(file), (), src)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if "constructor" in str(problem):
            problem = f"{problem} (tags like !!python/object are not allowed in recipes)"
        raise RecipeError(f"{file}{line}: YAML error: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_with_bases(file: Path, src: Source, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    file = file.resolve() if file.exists() else file
    if file in seen:
        chain = " -> ".join(str(p) for p in seen + (file,))
        raise RecipeError(f"{file}: 'extends' forms a cycle: {chain}")
    data = _load_yaml(file, src)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"{src.locate(('extends',))}: extends: expected a file path or a list of paths")
    merged: dict[str, Any] = {}
    for b in bases:
        base_file = (file.parent / b) if not Path(b).is_absolute() else Path(b)
        if not base_file.exists():
            raise RecipeError(f"{src.locate(('extends',))}: extends: base recipe {base_file} not found")
        base_src = Source()
        merged = _merge(merged, _load_with_bases(base_file, base_src, seen + (file,)))
        # child keys keep their own location; keys only in a base point at the base file
        for k, v in base_src.where.items():
            src.where.setdefault(k, v)
    return _merge(merged, data)


# -- command-line overrides ---------------------------------------------------------------------------
def apply_override(data: dict[str, Any], text: str, src: Source) -> None:
    """``a.b.c=value``; the value is parsed as YAML (``[x,y]`` is a list, ``3`` an int, ``null`` None)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    path = tuple(p for p in key.strip().split(".") if p)
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"override {text!r}: cannot parse the value: {e}") from None
    node = data
    for i, p in enumerate(path[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a mapping")
        node = nxt
    node[path[-1]] = value
    for n in range(1, len(path) + 1):
        src.where[path[:n]] = f"command line override '{text}'"


# -- validation with helpful errors -------------------------------------------------------------------
def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        f = model.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = getattr(f, "annotation", None) if f else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _explain(err: dict, src: Source) -> str:
    loc = tuple(str(p) for p in err["loc"])
    where = src.locate(loc)
    key = ".".join(loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        parent = _model_at(Recipe, err["loc"][:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{where}: {key}: unknown key.{hint} Valid keys here: {', '.join(valid)}"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {key}: {err['msg']}{got_s}"


def _check_tasks(recipe: Recipe, src: Source) -> None:
    """Task names are known only to the simulator backend: check them now, not an hour into a run."""
    if recipe.envs.backend != "metaworld":
        return
    from vlaforge.envs.tasks import resolve_tasks

    for i, name in enumerate(recipe.envs.tasks):
        try:
            resolve_tasks([name])
        except ValueError as e:
            raise RecipeError(f"invalid recipe:\n  {src.locate(('envs', 'tasks', str(i)))}: envs.tasks.{i}: {e}") from None


def _validate(data: dict[str, Any], src: Source) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_explain(err, src) for err in e.errors()]
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None
    _check_tasks(recipe, src)
    return recipe


def _stage_source(src: Source, i: int) -> Source:
    """Locations for a stage's merged recipe: keys set by the stage point at its ``set:`` block."""
    prefix = ("stages", str(i), "set")
    out = Source(dict(src.where))
    for path, where in src.where.items():
        if path[: len(prefix)] == prefix and len(path) > len(prefix):
            out.where[path[len(prefix):]] = where
    return out


def stage_recipe(recipe: Recipe, index: int, src: Source | None = None) -> Recipe:
    """The recipe as stage ``index`` sees it: the top-level values with the stage's ``set:`` merged over."""
    stage = recipe.stages[index]
    if not stage.set:
        return recipe
    data = _merge(recipe.model_dump(mode="json"), stage.set)
    data["stages"] = [s.model_dump(mode="json") for s in recipe.stages]
    return _validate(data, _stage_source(src or Source(), index))


def validate(data: dict[str, Any], src: Source) -> Recipe:
    recipe = _validate(data, src)
    for i, stage in enumerate(recipe.stages):
        if "stages" in stage.set:
            raise RecipeError(f"{src.locate(('stages', str(i), 'set', 'stages'))}: stages.{i}.set: a stage cannot set 'stages'")
        try:
            stage_recipe(recipe, i, src)  # errors in a stage's `set:` surface now, with their lines
        except RecipeError as e:
            msg = str(e).replace("invalid recipe:", f"invalid recipe (stage '{stage.name}', stages.{i}.set):", 1)
            raise RecipeError(msg) from None
    return recipe


def load_recipe(file: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    src = Source()
    data = _load_with_bases(Path(file), src)
    for o in overrides:
        apply_override(data, o, src)
    return validate(data, src)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved with every run; loadable again with load_recipe)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
