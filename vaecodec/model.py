"""The mean-scale hyperprior VAE: transforms, gains and the training-time rate-distortion forward pass.

Data path (Minnen, Ballé, Toderici 2018, without the autoregressive context model):

    x --g_a--> y --*gain[q]--> y_q --h_a--> z --round(z - median)--> z_symbols
    z_symbols, q --h_s (integer)--> mean, scale_index
    y_symbols = round(y_q - mean)                                        (coded with the scale's table)
    y_hat = (y_symbols + mean) * inverse_gain[q] --g_s--> x_hat

Variable rate comes from per-channel gain vectors (Cui et al., "Asymmetric gained deep image compression
with continuous rate adaptation", CVPR 2021): one gain and one inverse gain per trained level; fractional
qualities interpolate them geometrically. Training minimises lambda[q] * 255^2 * MSE + bpp, where bpp is
-log2 of the likelihood of the noisy latents under the prior: the KL term of the VAE, weighted as in a
beta-VAE.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .entropy.factorized import FactorizedPrior
from .entropy.gaussian import NUM_SCALES, GaussianConditional
from .integer_net import HyperSynthesis
from .layers import GDN, conv, deconv, interpolate_levels, round_ste

# CompressAI's MSE lambda ladder for its 8 quality levels (distortion on 0-255 MSE): the default, and the
# ladder of every model whose weights predate ModelConfig.lambdas.
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
STRIDE = 64  # total downsampling of z: images are padded to a multiple of this


@dataclass(frozen=True)
class ModelConfig:
    channels: int = 96  # N: width of the analysis/synthesis transforms
    latent_channels: int = 128  # M: channels of y
    hyper_channels: int = 96  # channels of z and of the hyper transforms
    levels: int = len(LAMBDAS)
    lambdas: tuple = LAMBDAS  # the rate-distortion trade-off each level trains for, one per level

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))  # JSON gives lists
        if len(self.lambdas) != self.levels or any(v <= 0 for v in self.lambdas):
            raise ValueError(f"need {self.levels} positive lambdas, got {self.lambdas}")

    def to_dict(self) -> dict:
        return asdict(self)


class HyperpriorVAE(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        n, m, h = config.channels, config.latent_channels, config.hyper_channels
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))
        self.g_s = nn.Sequential(
            deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True),
            deconv(n, n), GDN(n, inverse=True), deconv(n, 3),
        )
        self.h_a = nn.Sequential(conv(m, h, 3, 1), nn.ReLU(), conv(h, h), nn.ReLU(), conv(h, h))
        self.h_s = HyperSynthesis(h, h, m, NUM_SCALES, config.levels)
        self.z_prior = FactorizedPrior(h)
        self.y_conditional = GaussianConditional()
        # log-domain gains keep them positive and make geometric interpolation linear
        # Start each level at the quantization step its lambda calls for (step ~ lambda^-1/2), so the levels
        # differ from the first step instead of after thousands of gain updates.
        lambdas = torch.tensor(config.lambdas, dtype=torch.float32)
        log_step = 0.5 * (lambdas.log() - lambdas.log().mean())
        self.log_gain = nn.Parameter(log_step[:, None].repeat(1, m))
        self.log_inverse_gain = nn.Parameter(-log_step[:, None].repeat(1, m))

    def gains(self, level: torch.Tensor):
        """Gain and inverse gain for (possibly fractional) zero-based levels, shape (B,) -> (B, M, 1, 1)."""
        log_gain = interpolate_levels(self.log_gain, level)
        log_inverse = interpolate_levels(self.log_inverse_gain, level)
        return log_gain.exp()[:, :, None, None], log_inverse.exp()[:, :, None, None]

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> dict:
        """Training pass: noisy latents for the rate, straight-through rounded latents for the distortion."""
        gain, inverse_gain = self.gains(level)
        y = self.g_a(x).float() * gain
        # Under bf16 autocast only g_a and g_s run in bf16: the hyperprior is cheap, and the rate and the
        # scale positions need float32 (a bf16 CDF difference loses the small likelihoods).
        with torch.autocast(x.device.type, enabled=False):
            z = self.h_a(y)
            medians = self.z_prior.medians.detach()[None, :, None, None]
            z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            z_likelihood = self.z_prior.likelihood(z_noisy)
            z_symbols = round_ste(z - medians)
            mean, scale_position = self.h_s(z_symbols, level)
            scale = self.y_conditional.scale_from_position(scale_position)
            y_noisy_residual = y - mean + torch.empty_like(y).uniform_(-0.5, 0.5)
            y_likelihood = self.y_conditional.likelihood(y_noisy_residual, scale)
            y_hat = round_ste(y - mean) + mean
        x_hat = self.g_s(y_hat * inverse_gain).float()
        return {"x_hat": x_hat, "y_likelihood": y_likelihood, "z_likelihood": z_likelihood}


def rate_distortion_loss(x: torch.Tensor, output: dict, level: torch.Tensor, lambdas: tuple,
                         level_weighting: float = 0.0) -> dict:
    """lambda * 255^2 * MSE + bpp per image, averaged; also returns the parts for logging.

    Each image's objective is scaled by (lambda_mid / lambda) ** level_weighting before averaging. That leaves
    every level's own rate-distortion optimum where it is, but stops the high-lambda images, whose distortion
    gradients are up to 100x larger, from deciding the shared transforms alone.
    """
    num_pixels = x.shape[2] * x.shape[3]
    bits = -(output["y_likelihood"].log2().flatten(1).sum(1) + output["z_likelihood"].log2().flatten(1).sum(1))
    bpp = bits / num_pixels
    mse = (output["x_hat"] - x).pow(2).flatten(1).mean(1)
    lambda_mid = math.exp(sum(math.log(v) for v in lambdas) / len(lambdas))  # geometric mean
    lambda_of_image = torch.tensor(lambdas, device=x.device)[level.round().long()]
    weights = (lambda_mid / lambda_of_image) ** level_weighting
    loss = (weights * (lambda_of_image * 255**2 * mse + bpp)).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean()}
