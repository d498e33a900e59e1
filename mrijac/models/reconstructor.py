"""The whole map from a measurement to a reconstruction, ``f(y) = out(net(in(y)))``.

The Jacobian penalties differentiate this whole map (input transform, normalisation,
network, output transform), so ``J(y)`` is the Jacobian of what the user actually gets.
"""

from __future__ import annotations

import torch
from fastmri.data.transforms import center_crop as fastmri_center_crop
from torch import nn


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Centre crop of the last two axes to ``shape`` (fastmri's ``center_crop``), with an error
    that names both sizes."""
    h, w = shape
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"cannot crop {H}x{W} to {h}x{w}")
    return fastmri_center_crop(x, (h, w))


def safe_abs(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """``sqrt(re² + im²)`` with a zero (not NaN) derivative at the origin."""
    return torch.sqrt(re * re + im * im + torch.finfo(re.dtype).tiny)


class Reconstructor(nn.Module):
    """Measurement -> image: ``x0 = Aᴴ y`` (or ``y``), crop, channels, normalise, net, output.

    Args:
        net: image network ``(B, C_in, h, w) -> (B, C_out, h, w)`` (or ``(B, q) -> (B, p)``).
        input: ``"adjoint"`` (zero-filled / adjoint image ``Aᴴ y``, MRI) or ``"measurement"``
            (``y`` itself: FC net for compressed sensing, EDSR/WDSR for super-resolution).
        complex_to: how a complex image enters the network: ``"channels"`` (re, im as two
            channels) or ``"magnitude"`` (one channel).
        crop: ``(h, w)`` centre crop of the image before the network (fastMRI 320×320).
        normalize: instance normalisation ``(x − μ)/σ`` per sample, undone after the network
            (as fastmri's U-Net transform does, but inside the differentiated map).
        output: ``"magnitude"`` (2 channels -> ``|re + i·im|``, 1 channel -> squeezed;
            result ``(B, h, w)``) or ``"identity"``.
        residual: the network predicts a correction of its (normalised) input,
            ``net(x) + x`` — training starts from the zero-filled image.  Needs equal input and
            output channels.
    """

    def __init__(
        self,
        net: nn.Module,
        input: str = "adjoint",
        complex_to: str = "channels",
        crop: tuple[int, int] | None = None,
        normalize: bool = True,
        output: str = "magnitude",
        residual: bool = False,
    ):
        super().__init__()
        for name, val, ok in (
            ("input", input, ("adjoint", "measurement")),
            ("complex_to", complex_to, ("channels", "magnitude")),
            ("output", output, ("magnitude", "identity")),
        ):
            if val not in ok:
                raise ValueError(f"Reconstructor {name} must be one of {ok}, got {val!r}")
        self.net, self.input, self.complex_to = net, input, complex_to
        self.crop = tuple(crop) if crop is not None else None
        self.normalize, self.output, self.residual = normalize, output, residual

    def image_input(self, y: torch.Tensor, A=None) -> torch.Tensor:
        """The network's input before normalisation (e.g. zero-filled ``(B, 2, h, w)``)."""
        if self.input == "adjoint":
            if A is None:
                raise ValueError("Reconstructor(input='adjoint') needs the operator A")
            x = A.adjoint(y)
        else:
            x = y
        if self.crop is not None:
            x = center_crop(x, self.crop)
        if x.is_complex():
            if self.complex_to == "channels":
                x = torch.stack([x.real, x.imag], dim=1)
            else:
                x = safe_abs(x.real, x.imag)[:, None]
        elif x.dim() == 3:
            x = x[:, None]
        return x

    def forward(self, y: torch.Tensor, A=None) -> torch.Tensor:
        x = self.image_input(y, A)
        net = (lambda t: self.net(t) + t) if self.residual else self.net
        if self.normalize:
            dims = tuple(range(1, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True) + 1e-11
            z = net((x - mean) / std) * std + mean
        else:
            z = net(x)
        if self.output == "magnitude" and z.dim() == 4:
            if z.shape[1] == 2:
                return safe_abs(z[:, 0], z[:, 1])
            if z.shape[1] == 1:
                return z[:, 0]
        return z

    def as_function(self, A=None):
        """``y -> f(y)`` for the Jacobian tools (a closure over this module and ``A``; its
        ``module`` attribute is this module, for checks on what the closure runs)."""

        def fn(y):
            return self(y, A)

        fn.module = self
        return fn
