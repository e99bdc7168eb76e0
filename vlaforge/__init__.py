"""vlaforge: train vision-language-action robot policies with Ray rollouts and DeepSpeed learners."""

from __future__ import annotations

__version__ = "0.1.0"


def from_pretrained(path, device: str = "cpu"):
    """Load a published (or exported) policy folder after verifying every file against its MANIFEST.json.

    -> (policy in eval mode, processor, policy config, spec, extra). A tampered, truncated or missing file
    raises ``vlaforge.policies.io.IntegrityError`` naming the file; a folder without a manifest is refused.
    Imports torch lazily, so ``import vlaforge`` stays cheap (the CLI's --version).
    """
    from vlaforge.policies.io import load_pretrained, verify_folder

    verify_folder(path, require_manifest=True)
    return load_pretrained(path, device=device)


__all__ = ["__version__", "from_pretrained"]
