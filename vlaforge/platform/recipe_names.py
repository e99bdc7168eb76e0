"""Registry-backed recipe values, checked against their registries (the single source of truth).

A recipe names a stage kind, an objective, a policy type, backbones, a head, a normaliser, an env backend,
a weight transport. Each lives in a registry in its own layer; the schema keeps these fields plain
``str`` (no ``Literal`` list repeating a registry), and this module checks every one against the registry
it names, with the valid names and the closest match. A new head, backbone or stage kind is therefore one
registration: nothing here or in the schema changes.

Cost: a registry is filled by importing the modules that register into it -- torch, tensordict and
every model file, several seconds -- while the schema itself imports none of that. So a name is first
looked up in the registrations WRITTEN in the layer's source (``register_head("flow")``,
``HEAD_REGISTRY.register("x")``, ``SCORES = {"success": ...}``), read with ``ast`` without importing
anything (~50 ms); only a name not found there (a typo, or one registered at run time) imports the
registry, which then decides and lists the valid names. tests/platform/test_recipe_rules.py checks that
the source scan and every imported registry agree, so the fast path never accepts a name the registry lacks.
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import vlaforge

from vlaforge.platform.config import Recipe

Path_ = tuple[str, ...]


def problem(src, path: Path_, value, msg: str) -> str:
    """One error line: ``file:line: key.path = value: what is wrong and what is expected``."""
    return f"{src.locate(path)}: {'.'.join(path)} = {value!r}: {msg}"


def closest(value: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(names), n=1, cutoff=0.4)
    return f" Did you mean {close[0]!r}?" if close else ""


# -- where each registry lives (imported on first use) -----------------------------------------------------
def _stage_kinds() -> Iterable[str]:
    from vlaforge.platform.stages import STAGES

    return STAGES


def _objectives() -> Iterable[str]:
    import vlaforge.learners as learners  # its __init__ imports every objective module (their registrations)

    return learners.OBJECTIVES


def _policy_registry(name: str) -> Callable[[], Iterable[str]]:
    def names() -> Iterable[str]:
        import vlaforge.policies.vla  # noqa: F401 -- build_policy's module: imports every backbone and head
        from vlaforge.policies import registry

        return getattr(registry, name).names()

    return names


def _normalizers() -> Iterable[str]:
    from vlaforge.policies.normalize import NORMALIZER_REGISTRY

    return NORMALIZER_REGISTRY.names()


def _env_backends() -> Iterable[str]:
    from vlaforge.envs import BACKEND_MODULES  # cheap: the contract (torch) and simulators load lazily

    base = sys.modules.get("vlaforge.envs.base")  # backends registered in this process (e.g. by a test)
    return set(BACKEND_MODULES) | set(getattr(base, "ENV_REGISTRY", ()))


def _quantizers() -> Iterable[str]:
    from vlaforge.policies.latent_action.quantizers import QUANTIZERS

    return QUANTIZERS.names()


def _grpo_scores() -> Iterable[str]:
    from vlaforge.learners.grpo import SCORES

    return SCORES


def _broadcasters() -> Iterable[str]:
    from vlaforge.runtime.weights.registry import BROADCASTERS

    return BROADCASTERS


# -- the registrations written in a layer's source, read without importing it ----------------------------------
@lru_cache(maxsize=None)
def source_registrations(layer: str) -> dict[str, frozenset[str]]:
    """vlaforge/<layer>/**.py -> {callee or dict name: the string literals registered}: the first argument of
    calls like ``register_head("x")`` / ``HEAD_REGISTRY.register("x")`` (keyed "register_head" /
    "HEAD_REGISTRY.register"), and the string keys of dict literals assigned to a name (``SCORES = {...}``)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted((Path(vlaforge.__file__).parent / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                f = node.func
                if isinstance(f, ast.Name):
                    found[f.id].add(node.args[0].value)
                elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                    found[f"{f.value.id}.{f.attr}"].add(node.args[0].value)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name):
                        found[t.id] |= keys
    return {k: frozenset(v) for k, v in found.items()}


@dataclass(frozen=True)
class Named:
    what: str  # in the message: "unknown action head 'x'"
    names: Callable[[], Iterable[str]]  # the registry's names (imports what fills it): the authority
    layer: str | None = None  # where its registrations are written (fast path), e.g. "policies"
    written_as: tuple[str, ...] = ()  # callees / dict names that register into it there

    def written(self) -> frozenset[str]:
        if self.layer is None:
            return frozenset()
        regs = source_registrations(self.layer)
        return frozenset().union(*(regs.get(w, frozenset()) for w in self.written_as))


def _policies(registry: str, register: str) -> Named:
    what = {"VISION_REGISTRY": "vision backbone", "LANGUAGE_REGISTRY": "language backbone",
            "HEAD_REGISTRY": "action head", "POLICY_REGISTRY": "policy type", "BACKBONE_REGISTRY": "backbone"}[registry]
    return Named(what, _policy_registry(registry), "policies", (register, f"{registry}.register"))


VISION = _policies("VISION_REGISTRY", "register_vision")
LANGUAGE = _policies("LANGUAGE_REGISTRY", "register_language")

# key path -> the registry its value must be a name of
NAMED_FIELDS: dict[Path_, Named] = {
    ("train", "objective"): Named("objective", _objectives, "learners", ("register_objective",)),
    ("policy", "type"): _policies("POLICY_REGISTRY", "register_policy"),
    ("policy", "vision", "type"): VISION,
    ("policy", "language", "type"): LANGUAGE,
    ("policy", "backbone", "type"): _policies("BACKBONE_REGISTRY", "register_backbone"),
    ("policy", "head", "type"): _policies("HEAD_REGISTRY", "register_head"),
    ("policy", "action_norm"): Named("action normaliser", _normalizers, "policies",
                                     ("register_normalizer", "NORMALIZER_REGISTRY.register")),
    ("reward_model", "vision", "type"): VISION,
    ("reward_model", "language", "type"): LANGUAGE,
    ("envs", "backend"): Named("env backend", _env_backends),
    ("rollout", "broadcast"): Named("weight broadcast", _broadcasters, "runtime", ("BROADCASTERS",)),
    ("train", "grpo", "score"): Named("GRPO trajectory score", _grpo_scores, "learners", ("SCORES",)),
    ("latent", "model", "quantizer"): Named("latent quantizer", _quantizers, "policies",
                                            ("register_quantizer", "QUANTIZERS.register")),
}
STAGE_KIND = Named("stage kind", _stage_kinds)  # platform/stages.py is cheap to import: no fast path


def _get(recipe: Recipe, path: Path_):
    v = recipe
    for p in path:
        v = getattr(v, p)
    return v


def _check(src, path: Path_, value: str, named: Named) -> list[str]:
    if value in named.written():  # registered in the source: no import needed
        return []
    names = sorted(named.names())
    if value in names:
        return []
    return [problem(src, path, value, f"unknown {named.what}.{closest(value, names)} Registered: {', '.join(names)}")]


def check_names(recipe: Recipe, src) -> list[str]:
    """Every registry-backed value of ``recipe`` -> error lines (empty: all known)."""
    out: list[str] = []
    for path, named in NAMED_FIELDS.items():
        out += _check(src, path, _get(recipe, path), named)
    for i, stage in enumerate(recipe.stages):
        out += _check(src, ("stages", str(i), "kind"), stage.kind, STAGE_KIND)
    out += check_tasks(recipe, src)
    return out


def check_tasks(recipe: Recipe, src) -> list[str]:
    """Task names are known only to the simulator backend: check them now, not an hour into a run."""
    if recipe.envs.backend != "metaworld":  # the only backend with a task table; others check at build
        return []
    from vlaforge.envs.tasks import ALL_TASKS, BENCHMARKS, resolve_tasks

    out = []
    for i, name in enumerate(recipe.envs.tasks):
        if name in ALL_TASKS or name.upper() in BENCHMARKS:  # a benchmark is not expanded here (that imports
            continue  # Meta-World itself, ~1 s): its name is enough
        try:
            resolve_tasks([name])
        except ValueError as e:
            out.append(f"{src.locate(('envs', 'tasks', str(i)))}: envs.tasks.{i}: {e}")
    return out
