"""Neural-network building blocks of the analysis and synthesis transforms."""

import torch
from torch import nn
import torch.nn.functional as F


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through)."""
    return x + (torch.round(x) - x).detach()


def interpolate_levels(table: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Rows of a per-level table (L, C) at zero-based, possibly fractional levels (B,): linear in between."""
    level = level.clamp(0, table.shape[0] - 1)
    low = level.floor().long().clamp(max=table.shape[0] - 2)
    t = (level - low)[:, None]
    return (1 - t) * table[low] + t * table[low + 1]


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still pushes x upwards when it sits below the bound."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp(min=bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé, Laparra, Simoncelli, ICLR 2016).

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); with ``inverse=True`` it multiplies instead (IGDN),
    the approximate inverse used in the synthesis transform. beta and gamma are stored squared-root
    reparametrized (plus a small pedestal) so gradient steps stay well conditioned near zero.
    """

    _PEDESTAL = 2.0 ** -18

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self._beta_bound = (beta_min + self._PEDESTAL) ** 0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self._PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self._PEDESTAL))

    def effective_parameters(self) -> tuple:
        """(beta, gamma) as the layer applies them, after the bounds and the reparametrization."""
        beta = lower_bound(self.beta, self._beta_bound) ** 2 - self._PEDESTAL
        gamma = lower_bound(self.gamma, self._PEDESTAL ** 0.5) ** 2 - self._PEDESTAL
        return beta, gamma

    @classmethod
    def stored_parameters(cls, beta: torch.Tensor, gamma: torch.Tensor) -> tuple:
        """The stored (beta, gamma) parameters that apply the given effective ones."""
        return (beta + cls._PEDESTAL).sqrt(), (gamma + cls._PEDESTAL).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective_parameters()
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, output_padding=stride - 1
    )
