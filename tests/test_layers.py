"""Imports point down the layers of DESIGN.md ("Who imports whom"): a static check of every module.

    platform -> learners, actors -> data, policies, envs -> runtime -> leaves (keys, manifest, errors, config_base)

A new edge that points up (e.g. runtime importing platform, policies importing a simulator) fails here with
the file and line, before it becomes an import cycle or a model that cannot load without Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vlaforge

PKG = Path(vlaforge.__file__).parent
LEAVES = {"keys", "manifest", "errors", "config_base"}
# The package's front door sits above everything: ``vlaforge.from_pretrained`` (lazy import of policies.io)
# and ``python -m vlaforge`` (the CLI). Importing them from inside the package is what would be wrong.
API = {"__init__", "__main__"}
# layer -> the layers it may import (besides itself and the leaves)
ALLOWED: dict[str, set[str]] = {
    "leaf": set(),
    "runtime": set(),
    "envs": {"runtime"},
    "policies": set(),
    "data": {"runtime", "envs", "policies"},
    "learners": {"runtime", "data", "policies"},
    "actors": {"runtime", "envs", "policies"},
    "platform": {"runtime", "envs", "policies", "data", "learners", "actors"},
    "api": {"runtime", "envs", "policies", "data", "learners", "actors", "platform"},
}


def _layer(parts: tuple[str, ...]) -> str:
    name = parts[0].removesuffix(".py")
    return "leaf" if name in LEAVES else "api" if name in API else name


def _edges():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).parts
        src = _layer(rel)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("vlaforge."):
                    dst = _layer((name.split(".")[1],))
                    yield path, node.lineno, src, dst, name


def test_imports_point_down_the_layers():
    bad = [
        f"{p.relative_to(PKG.parent)}:{line}: {src} imports {name} ({dst} is not below {src})"
        for p, line, src, dst, name in _edges()
        if dst != src and dst != "leaf" and dst not in ALLOWED[src]
    ]
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_the_layer_map_knows_every_subpackage():
    subpackages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages <= set(ALLOWED), f"add {subpackages - set(ALLOWED)} to ALLOWED in {__file__}"
