"""Checkpoint directory IO: model.safetensors + config.json + processor.json, written atomically.

Never pickle: weights go through safetensors, everything else is JSON.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlaforge.errors import VlaforgeError
from vlaforge.manifest import MANIFEST, ManifestError, verify_manifest
from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.processor import VLAProcessor
from vlaforge.policies.spec import PolicySpec
from vlaforge.policies.vla import build_policy


def _vlaforge_version() -> str:
    # The installed distribution's version; `vlaforge.__version__` is missing when an editable install
    # maps the package as a namespace (installed before vlaforge/__init__.py existed).
    try:
        return importlib.metadata.version("vlaforge")
    except importlib.metadata.PackageNotFoundError:
        import vlaforge

        return getattr(vlaforge, "__version__", "unknown")


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "processor.json"


def save_pretrained(
    directory: str | os.PathLike,
    policy: nn.Module,
    processor: VLAProcessor,
    cfg: PolicyConfig,
    spec: PolicySpec,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint into a temp dir beside ``directory``, then swap it in (never half-written)."""
    config = {"policy": cfg.model_dump(mode="json"), "spec": spec.to_dict()}
    return write_checkpoint(directory, policy, config, processor.to_dict(), extra)


def write_checkpoint(
    directory: str | os.PathLike,
    module: nn.Module,
    config: dict[str, Any],
    processor: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """The model-agnostic part of ``save_pretrained`` (also used by the reward model): safetensors weights,
    ``config`` (+ version, ``extra``) as config.json and ``processor`` as processor.json, atomically."""
    target = Path(directory).resolve()
    config = {"vlaforge_version": _vlaforge_version(), **config, "extra": extra or {}}
    try:
        config_text = json.dumps(config, indent=2)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_pretrained: `extra` must be JSON-serialisable ({e})") from e
    # safetensors needs contiguous, unshared CPU tensors.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "vlaforge_version": _vlaforge_version()})
        (tmp / CONFIG_FILE).write_text(config_text)
        (tmp / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2))
        for f in tmp.iterdir():  # durable before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_in(tmp: Path, target: Path) -> None:
    # rename() cannot replace a non-empty directory: move the old one aside first, then drop it.
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{id(tmp)}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint file {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint file {path} must hold a JSON object, got {type(data).__name__}")
    return data


class IntegrityError(VlaforgeError, ValueError):
    """A model folder does not match its MANIFEST.json (a tampered, truncated or missing file)."""


def verify_folder(directory: str | os.PathLike, require_manifest: bool = False) -> Path:
    """Check every file of a model folder against its sha256 manifest BEFORE anything is read from it.

    Published folders (``vlaforge publish``) and checkpoint policy exports carry MANIFEST.json; a folder
    without one is accepted unless ``require_manifest`` (``vlaforge.from_pretrained`` requires it).
    The error names the file that differs.
    """
    root = Path(directory)
    if not (root / MANIFEST).exists() and not require_manifest:
        return root
    try:
        verify_manifest(root)
    except ManifestError as e:
        raise IntegrityError(f"refusing to load {root}: {e}") from None
    return root


def read_checkpoint(
    directory: str | os.PathLike, required: tuple[str, ...]
) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """The model-agnostic part of ``load_pretrained``: -> (root, config.json, processor.json, CPU weights),
    with an error naming the file when one is missing, not JSON, lacks a ``required`` entry or is corrupt."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    verify_folder(root)  # hashes first: never parse a file that differs from what was written
    config = _read_json(root / CONFIG_FILE)
    for field in required:
        if field not in config:
            raise ValueError(f"{root / CONFIG_FILE} has no {field!r} entry (keys: {sorted(config)})")
    processor = _read_json(root / PROCESSOR_FILE)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {weights}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {weights} is corrupt or not a safetensors file ({e})") from e
    return root, config, processor, state


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], root: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint file {root / WEIGHTS_FILE} does not match the model in {root / CONFIG_FILE}: {e}") from e


def build_loaded(build: Callable[[Any], nn.Module], cfg: Any, state: dict[str, torch.Tensor], root: Path,
                 device: str | torch.device) -> nn.Module:
    """Build a model from ``cfg`` WITHOUT its backbones' pretrained (e.g. ImageNet) weights -- the checkpoint
    overwrites them anyway -- load ``state`` strictly and return it in eval mode on ``device``."""
    build_cfg = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"pretrained": False})})
    model = build(build_cfg)
    load_state_strict(model, state, root)
    model.cfg = cfg
    return model.to(device).eval()


def load_pretrained(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, VLAProcessor, PolicyConfig, PolicySpec, dict[str, Any]]:
    """-> (policy in eval mode on ``device``, processor, cfg, spec, extra)."""
    root, config, proc_dict, state = read_checkpoint(directory, required=("policy", "spec"))
    try:
        cfg = PolicyConfig.model_validate(config["policy"])
        spec = PolicySpec.from_dict(config["spec"])
        processor = VLAProcessor.from_dict(proc_dict)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{root}: invalid config.json / processor.json: {e}") from e

    policy = build_loaded(lambda c: build_policy(c, spec), cfg, state, root, device)
    return policy, processor, cfg, spec, config.get("extra", {})
