"""Instance normalisation from plain tensor ops, for penalties that differentiate a JVP.

fastmri's Unet normalises with ``nn.InstanceNorm2d``, whose fused kernel (``batch_norm``) has a
first derivative but no correct second one: reverse mode over its forward-mode JVP — what
``JacobianPenalty(method="forward")`` differentiates — gives a silently wrong parameter gradient
(pytorch/pytorch#196699, "batch_norm returns an incorrect second-order JVP"; measured here: 0.29
relative error on a smooth U-Net against a numerical derivative, exact once the norm is written
out), and double backward (``method="double_vjp"``) raises.  :class:`InstanceNormAD` computes the
same normalisation from means and variances, whose higher derivatives torch gets right.
"""

from __future__ import annotations

import torch
from torch import nn


class InstanceNormAD(nn.Module):
    """``(x − mean) / sqrt(var + eps)`` over the spatial axes of ``x`` ``(B, C, *spatial)``,
    per sample and channel (biased variance, as ``nn.InstanceNorm*d`` without running
    statistics), then ``· weight + bias`` per channel when ``affine``.  Same output as the module
    it replaces to float rounding; its derivatives of every order are those of the formula."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        self.num_features, self.eps, self.affine = int(num_features), float(eps), bool(affine)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features))
            self.bias = nn.Parameter(torch.zeros(self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            shape = (1, -1) + (1,) * len(dims)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


def plain_instance_norms(model: nn.Module) -> int:
    """Replace, in place, every ``nn.InstanceNorm1d/2d/3d`` of ``model`` that keeps no running
    statistics by an :class:`InstanceNormAD` (affine parameters carried over, same state-dict
    keys) and turn in-place activations out-of-place (the same values; the in-place ones would
    overwrite what the new norms' derivatives keep); returns how many norms were replaced.  A
    norm with running statistics is refused: in evaluation mode it normalises by them, which
    this module does not model."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.instancenorm._InstanceNorm):
                continue
            if child.track_running_stats:
                raise ValueError(
                    f"plain_instance_norms: {name} keeps running statistics (track_running_stats=True), "
                    "which InstanceNormAD does not model"
                )
            new = InstanceNormAD(child.num_features, child.eps, child.affine)
            if child.affine:  # the same Parameter objects: device, dtype and optimizer state carry over
                new.weight, new.bias = child.weight, child.bias
            setattr(parent, name, new)
            n += 1
    if n:  # fastmri's in-place LeakyReLUs would overwrite what the new norms' forward-mode derivatives keep
        for mod in model.modules():
            if getattr(mod, "inplace", False) is True:
                mod.inplace = False
    return n
