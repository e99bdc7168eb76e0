"""Loading recipes: safe YAML with line numbers, ``extends:`` bases, command-line overrides, typed validation.

Every error names the file, the line, the key path, what was expected and, for a misspelt key, the
closest valid key -- and is raised as ``RecipeError`` (the CLI prints it and exits 2, no traceback).
Three passes: the schema (pydantic, per field), the registry names (recipe_names.py) and the cross-field
rules (recipe_rules.py), the last two on every stage as it will run. YAML is read with the safe loader;
recursive aliases and alias bombs ("billion laughs") are refused while the nodes are converted.
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
from vlaforge.platform.recipe_names import check_names
from vlaforge.platform.recipe_rules import View, check_rules

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
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Bounds of the converted document. Aliases are references, so a few lines of nested aliases can stand for
# billions of values ("billion laughs"); we expand them while converting and stop at MAX_NODES (a real recipe
# has a few hundred). MAX_DEPTH keeps a deeply nested file from exhausting the Python stack.
MAX_NODES = 20_000
MAX_DEPTH = 50
MAX_BYTES = 1 << 20  # recipes are small; refuse a multi-megabyte file before parsing it


class _Loader(yaml.SafeLoader):
    """The safe loader, remembering which node carried which anchor (the composer forgets) to name it in errors."""

    def __init__(self, stream):
        super().__init__(stream)
        self.anchor_of: dict[int, str] = {}  # id(node) -> anchor name

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        node = super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self.anchor_of[id(node)] = anchor
        return node


@dataclass
class _Walk:
    """State of one conversion: the nodes on the current path (cycles) and the nodes expanded so far (bombs)."""

    loader: _Loader
    file: str
    src: Source
    open: set[int] = field(default_factory=set)
    count: int = 0

    def where(self, node: yaml.Node) -> str:
        return f"{self.file}:{node.start_mark.line + 1}"

    def name(self, node: yaml.Node) -> str:
        a = self.loader.anchor_of.get(id(node))
        return f"anchor &{a}" if a else "a node"


def _node_to_py(node: yaml.Node, w: _Walk, path: Path_, depth: int = 0) -> Any:
    w.count += 1
    if w.count > MAX_NODES:
        raise RecipeError(f"{w.file}: YAML expands to more than {MAX_NODES:,} values through its aliases (an alias "
                          "bomb?): a recipe is a few hundred values; write the values out or use fewer nested aliases")
    if depth > MAX_DEPTH:
        raise RecipeError(f"{w.where(node)}: YAML nested deeper than {MAX_DEPTH} levels at {'.'.join(path)}")
    if id(node) in w.open:
        raise RecipeError(f"{w.where(node)}: YAML {w.name(node)} contains an alias to itself (at {'.'.join(path)}): "
                          "a recursive value cannot be a recipe")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        # a tagged collection (e.g. !!python/object/apply): the safe constructor raises for it
        return w.loader.construct_object(node, deep=True)
    if isinstance(node, yaml.ScalarNode):
        return w.loader.construct_object(node, deep=True)
    w.open.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                w.src.where[path + (str(i),)] = w.where(v)
            return [_node_to_py(v, w, path + (str(i),), depth + 1) for i, v in enumerate(node.value)]
        return _mapping(node, w, path, depth)
    finally:
        w.open.discard(id(node))


def _mapping(node: yaml.MappingNode, w: _Walk, path: Path_, depth: int) -> dict[str, Any]:
    """A mapping; ``<<: *base`` (or ``<<: [*a, *b]``) merge keys as YAML 1.1 defines them: the mapping's own
    keys win over merged ones, and earlier merged mappings over later ones."""
    out: dict[str, Any] = {}
    own: list[tuple[yaml.Node, yaml.Node]] = []
    for k_node, v_node in node.value:
        if k_node.tag != _MERGE_TAG:
            own.append((k_node, v_node))
            continue
        bases = v_node.value if isinstance(v_node, yaml.SequenceNode) else [v_node]
        for b in bases:
            if not isinstance(b, yaml.MappingNode):
                raise RecipeError(f"{w.where(b)}: {'.'.join(path) or '<top level>'}: '<<' merges mappings only")
            for k, v in _node_to_py(b, w, path, depth + 1).items():
                out.setdefault(k, v)
    seen: set[str] = set()
    for k_node, v_node in own:
        key = w.loader.construct_object(k_node, deep=True)
        if not isinstance(key, str):
            raise RecipeError(f"{w.where(k_node)}: keys must be strings, got {type(key).__name__}")
        if key in seen:
            raise RecipeError(f"{w.where(k_node)}: {'.'.join(path + (key,))}: key given twice")
        seen.add(key)
        w.src.where[path + (key,)] = w.where(k_node)
        out[key] = _node_to_py(v_node, w, path + (key,), depth + 1)
    return out


def _check_nesting(text: str, name: str) -> None:
    """PyYAML's composer recurses once per nesting level: walk the parser's events first (flat, no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{name}:{event.start_mark.line + 1}: YAML nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _parse_yaml(text: str, name: str, src: Source, path: Path_ = ()) -> Any:
    """YAML text -> plain Python (dicts, lists, scalars), every key's line in ``src``. Errors name ``name``."""
    loader = _Loader(text)  # safe: a !!python/object tag is an error, never code execution
    try:
        _check_nesting(text, name)
        node = loader.get_single_node()
        return None if node is None else _node_to_py(node, _Walk(loader, name, src), path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if "constructor" in str(problem):
            problem = f"{problem} (tags like !!python/object are not allowed in recipes)"
        raise RecipeError(f"{name}{line}: YAML error: {problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{name}: YAML error: {e}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise RecipeError(f"{name}: YAML nested too deeply to be a recipe") from None
    finally:
        loader.dispose()


def _load_yaml(file: Path, src: Source) -> dict[str, Any]:
    try:
        if file.stat().st_size > MAX_BYTES:
            raise RecipeError(f"{file}: {file.stat().st_size:,} bytes is too large for a recipe (at most {MAX_BYTES:,})")
        text = file.read_text()
    except FileNotFoundError:
        raise RecipeError(f"{file}: recipe file not found") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{file}: not a text file (UTF-8): {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise RecipeError(f"{file}: cannot read recipe: {e.strerror}") from None
    data = _parse_yaml(text, str(file), src)
    data = {} if data is None else data
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
    """``a.b.c=value``; the value is parsed as YAML (``[x,y]`` is a list, ``3`` an int, ``null`` None).
    A number indexes a list: ``stages.1.set.train.lr=1e-5``."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    path = tuple(p for p in key.strip().split(".") if p)
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    # the same bounded safe loader as recipe files (an alias bomb on the command line is refused too)
    value = _parse_yaml(raw, f"override {text!r}", Source()) if raw.strip() else None
    node: Any = data
    for i, p in enumerate(path):
        here = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not (p.isdigit() and int(p) < len(node)):
                raise RecipeError(f"override {text!r}: {here}: the list has {len(node)} entries (indices 0-{len(node) - 1})")
            p = int(p)
        elif not isinstance(node, dict):
            raise RecipeError(f"override {text!r}: {'.'.join(path[:i])} is not a mapping or a list")
        if i == len(path) - 1:
            node[p] = value
        else:
            if isinstance(node, dict) and node.get(p) is None:
                node[p] = {}
            node = node[p]
    for k in [k for k in src.where if k[: len(path)] == path]:  # the file's lines under a replaced value are stale
        del src.where[k]
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


def _validate(data: dict[str, Any], src: Source) -> Recipe:
    """The schema, then every registry-backed name (recipe_names.py)."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_explain(err, src) for err in e.errors()]
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None
    lines = check_names(recipe, src)
    if lines:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines))
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


# Blocks that apply to the whole run: the cluster is started once, metrics go to one logger, the run folder
# has one name. A stage's `set:` changing them would be accepted and ignored, so it is refused.
RUN_ONLY_KEYS = ("stages", "ray", "logging", "name")


def _validate_stages(data: dict[str, Any], src: Source) -> tuple[Recipe, list[View]]:
    recipe = _validate(data, src)
    views: list[View] = []
    for i, stage in enumerate(recipe.stages):
        for key in RUN_ONLY_KEYS:
            if key in stage.set:
                raise RecipeError(f"{src.locate(('stages', str(i), 'set', key))}: stages.{i}.set.{key}: a stage cannot "
                                  f"set '{key}': it applies to the whole run (set it at the top level)")
        try:
            srecipe = stage_recipe(recipe, i, src)  # errors in a stage's `set:` surface now, with their lines
        except RecipeError as e:
            msg = str(e).replace("invalid recipe:", f"invalid recipe (stage '{stage.name}', stages.{i}.set):", 1)
            raise RecipeError(msg) from None
        views.append(View(i, stage, srecipe, _stage_source(src, i) if stage.set else src))
    return recipe, views


def validate(data: dict[str, Any], src: Source) -> Recipe:
    """The schema and the registry names, at the top level and in every stage (no machine-dependent rules)."""
    return _validate_stages(data, src)[0]


def check_recipe(file: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, list[str]]:
    """Load and check a recipe completely (``vlaforge recipe check``): -> (recipe, notes on skipped checks).
    Raises RecipeError listing every broken cross-field rule, each with file, line, key, value and expectation."""
    src = Source()
    data = _load_with_bases(Path(file), src)
    for o in overrides:
        apply_override(data, o, src)
    recipe, views = _validate_stages(data, src)
    lines, notes = check_rules(views, recipe)
    if lines:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines))
    return recipe, notes


def load_recipe(file: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """``check_recipe`` without the notes: what ``train`` and ``demos`` run before any work."""
    return check_recipe(file, overrides)[0]


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (saved with every run; loadable again with load_recipe)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
