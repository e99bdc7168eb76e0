"""sha256 manifests of folders: written last when a folder is committed, verified before it is trusted.

A leaf module (imports nothing of ours) because three layers need the same rule: checkpoints
(``runtime.checkpoint``: verify before resuming, fall back to an older step when the newest fails),
published policies (``policies.io`` / ``platform.publish``: refuse a tampered or truncated file before
loading it) and anything that must never be unpickled unless the run recorded its hash itself.

    <folder>/MANIFEST.json   {"format": 1, "files": {"<relative path>": {"sha256": "...", "bytes": N}, ...}}

Paths in a manifest are relative, POSIX, and must stay inside the folder (``..`` or absolute paths make
the manifest itself invalid): a manifest read from disk is untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

MANIFEST = "MANIFEST.json"
FORMAT = 1
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A folder does not match its manifest (names the file and what is wrong with it)."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MANIFEST)


def build_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    files = {}
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return {"format": FORMAT, "files": files}


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory fsync makes renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: str | os.PathLike, *, fsync: bool = True) -> dict:
    """Hash every file under ``folder`` (except the manifest) and write MANIFEST.json atomically."""
    folder = Path(folder)
    manifest = build_manifest(folder)
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    if fsync:
        fsync_path(folder)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing (the folder was not committed with a manifest)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ManifestError(f"{path}: not a format-{FORMAT} manifest")
    for rel, entry in data["files"].items():
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not rel:
            raise ManifestError(f"{path}: entry {rel!r} leads outside {folder}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise ManifestError(f"{path}: entry {rel!r} lacks sha256/bytes")
    return data


def verify_manifest(folder: str | os.PathLike, *, allow_extra: bool = True) -> dict:
    """Check every listed file's size and sha256; raise ManifestError naming the first bad file.

    Sizes are checked first (cheap: a truncated file fails without hashing). ``allow_extra=False`` also
    refuses files that the manifest does not list.
    """
    folder = Path(folder)
    data = read_manifest(folder)
    for rel, entry in sorted(data["files"].items()):
        p = folder / rel
        if not p.is_file():
            raise ManifestError(f"{p}: listed in {folder / MANIFEST} but missing")
        size = p.stat().st_size
        if size != entry["bytes"]:
            raise ManifestError(f"{p}: {size} bytes, the manifest recorded {entry['bytes']} (truncated or replaced)")
    for rel, entry in sorted(data["files"].items()):
        p = folder / rel
        if sha256_file(p) != entry["sha256"]:
            raise ManifestError(f"{p}: sha256 differs from {folder / MANIFEST} (the file was modified)")
    if not allow_extra:
        extra = [p.relative_to(folder).as_posix() for p in _files(folder)]
        extra = [r for r in extra if r not in data["files"]]
        if extra:
            raise ManifestError(f"{folder}: files not in the manifest: {', '.join(extra[:5])}")
    return data


def recorded_hash(folder: str | os.PathLike, rel: str) -> str | None:
    """The sha256 the manifest of ``folder`` recorded for ``rel``, or None (no manifest / not listed)."""
    try:
        return read_manifest(folder)["files"].get(rel, {}).get("sha256")
    except ManifestError:
        return None
