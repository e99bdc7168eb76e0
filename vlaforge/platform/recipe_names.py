"""Registry-backed recipe values, checked against their registries (the single source of truth).

A recipe names a stage kind, an objective, a policy type, backbones, a head, a normaliser, an env backend,
a weight transport. Each lives in a registry in its own layer; the schema keeps these fields plain
``str`` (no ``Literal`` list repeating a registry), and this module checks every one against the registry
it names, with the valid names and the closest match. A new head, backbone or stage kind is therefore one
registration: nothing here or in the schema changes.

Cost: reading a registry imports the module that fills it. The recipe schema already imports the
policies, learners and envs packages (their ``__init__`` files register everything), so the lookups below
add no import to ``vlaforge recipe check``; see notes/readme-validate.md for the measured time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    from vlaforge.envs import BACKEND_MODULES, ENV_REGISTRY

    return set(ENV_REGISTRY) | set(BACKEND_MODULES)  # lazy backends register when first built


def _grpo_scores() -> Iterable[str]:
    from vlaforge.learners.grpo import SCORES

    return SCORES


def _broadcasters() -> Iterable[str]:
    from vlaforge.runtime.weights.registry import BROADCASTERS

    return BROADCASTERS


@dataclass(frozen=True)
class Named:
    what: str  # in the message: "unknown action head 'x'"
    names: Callable[[], Iterable[str]]


VISION = Named("vision backbone", _policy_registry("VISION_REGISTRY"))
LANGUAGE = Named("language backbone", _policy_registry("LANGUAGE_REGISTRY"))

# key path -> the registry its value must be a name of
NAMED_FIELDS: dict[Path_, Named] = {
    ("train", "objective"): Named("objective", _objectives),
    ("policy", "type"): Named("policy type", _policy_registry("POLICY_REGISTRY")),
    ("policy", "vision", "type"): VISION,
    ("policy", "language", "type"): LANGUAGE,
    ("policy", "head", "type"): Named("action head", _policy_registry("HEAD_REGISTRY")),
    ("policy", "action_norm"): Named("action normaliser", _normalizers),
    ("reward_model", "vision", "type"): VISION,
    ("reward_model", "language", "type"): LANGUAGE,
    ("envs", "backend"): Named("env backend", _env_backends),
    ("rollout", "broadcast"): Named("weight broadcast", _broadcasters),
    ("train", "grpo", "score"): Named("GRPO trajectory score", _grpo_scores),
}
STAGE_KIND = Named("stage kind", _stage_kinds)


def _get(recipe: Recipe, path: Path_):
    v = recipe
    for p in path:
        v = getattr(v, p)
    return v


def _check(src, path: Path_, value: str, named: Named) -> list[str]:
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
