"""Guided backpropagation (Springenberg et al., 2015): which input pixels raise a class score.

Symbols: B images in a batch, (C, H, W) their tensor shape, K classes.

Every rectifier of our networks is an :class:`Act` module. Normally it is a plain ReLU or
ReLU6; inside :func:`guided` its backward pass keeps a gradient only where the forward
input was active *and* the gradient arriving from above is positive. The result is the
sharp, class-specific map the paper shows next to a suspicious image.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class _GuidedReLU(torch.autograd.Function):
    """ReLU (``upper=None``) or ReLU6 (``upper=6``) with the guided backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        active = x > 0
        if ctx.upper is not None:
            active &= x < ctx.upper
        return grad * (active & (grad > 0)), None


class Act(nn.Module):
    """ReLU (``upper=None``) or ReLU6 (``upper=6.0``) that turns guided inside :func:`guided`."""

    def __init__(self, upper: float | None = None) -> None:
        super().__init__()
        self.upper = upper
        self.guided = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.guided:
            return _GuidedReLU.apply(x, self.upper)
        return F.relu6(x) if self.upper is not None else F.relu(x)

    def extra_repr(self) -> str:
        return f"upper={self.upper}"


@contextmanager
def guided(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every :class:`Act` of ``model`` uses the guided backward rule."""
    acts = [m for m in model.modules() if isinstance(m, Act)]
    for act in acts:
        act.guided = True
    try:
        yield model
    finally:
        for act in acts:
            act.guided = False


def guided_backprop(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|d logit[targets] / d x| under guided backpropagation.

    model : maps (B, C, H, W) to ``(logits (B, K), embedding)``, in eval mode.
    x : (B, C, H, W) float, the model's input. targets : (B,) int64 class per image.
    Returns (B, C, H, W) float >= 0 on ``x``'s device. Images are independent: the
    target logits are summed, and each image's gradient only depends on its own logit.
    """
    x = x.detach().clone().requires_grad_(True)
    with guided(model), torch.enable_grad():
        logits, _ = model(x)
        picked = logits.gather(1, targets.view(-1, 1).to(logits.device))
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad.abs()
