"""The VAE: analysis and synthesis transforms, per-level gains, a latent codec, and the training loss.

    x --g_a--> y --*gain[level]--> latent codec (y -> symbols -> y_hat) --*inverse_gain[level]--g_s--> x_hat

The latent codec (``latent_codecs/``, chosen by ``ModelConfig.latent_codec``) owns everything between the
transforms: side information, entropy models and rounding. Variable rate comes from per-channel gain vectors
(Cui et al., "Asymmetric gained deep image compression with continuous rate adaptation", CVPR 2021): one
gain and one inverse gain per trained level; fractional levels interpolate them geometrically. Training
minimises lambda[level] * 255^2 * MSE + bpp, where bpp is -log2 of the likelihood of the noisy latents under
the latent codec's entropy model: the KL term of the VAE, weighted as in a beta-VAE.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .latent_codecs import training_class
from .layers import GDN, conv, deconv, interpolate_levels

# CompressAI's MSE lambda ladder for its 8 quality levels (distortion on 0-255 MSE): the default, and the
# ladder of every model whose weights predate ModelConfig.lambdas.
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
STRIDE = 64  # total downsampling of z: images are padded to a multiple of this


@dataclass(frozen=True)
class ModelConfig:
    channels: int = 96  # N: width of the analysis transform (and of the synthesis, unless set below)
    latent_channels: int = 128  # M: channels of y
    hyper_channels: int = 96  # channels of z and of the hyper transforms
    levels: int = len(LAMBDAS)
    lambdas: tuple = LAMBDAS  # the rate-distortion trade-off each level trains for, one per level
    latent_codec: str = "hyperprior"  # type name of the latent codec (latent_codecs.LATENT_CODECS)
    synthesis_channels: int = 0  # N of the synthesis transform when it differs from g_a's; 0: the same
    # Adam's step on the context networks' scale-position weights, relative to their other weights (the
    # parameterisation of latent_codecs/channel_conditional.py; the exported integers do not depend on it)
    context_position_rate: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))  # JSON gives lists
        if len(self.lambdas) != self.levels or any(v <= 0 for v in self.lambdas):
            raise ValueError(f"need {self.levels} positive lambdas, got {self.lambdas}")
        if not self.context_position_rate > 0:
            raise ValueError(f"context_position_rate must be positive, got {self.context_position_rate}")

    def to_dict(self) -> dict:
        return asdict(self)


# State-dict prefixes of models from before the latent codecs (checkpoints of running trainings, v1 weights),
# and where those modules live now: the one place old names are mapped.
LEGACY_PREFIXES = {"h_a.": "latent_codec.h_a.", "h_s.": "latent_codec.h_s.", "z_prior.": "latent_codec.z_codec.prior."}


def legacy_state_keys(state: dict, prefix: str = "") -> dict:
    """``state`` with pre-latent-codec keys renamed in place (and returned); other keys are left alone."""
    for key in list(state):
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(prefix + old):
                state[prefix + new + key[len(prefix + old):]] = state.pop(key)
    return state


# Positions of the layers in g_a and g_s (nn.Sequential, so they name the state-dict entries): convolutions,
# with a GDN (inverse GDN in g_s) between each two.
CONV_LAYERS = (0, 2, 4, 6)
GDN_LAYERS = (1, 3, 5)


def analysis_transform(config: ModelConfig) -> nn.Sequential:
    n, m = config.channels, config.latent_channels
    return nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))


def synthesis_transform(config: ModelConfig) -> nn.Sequential:
    n, m = config.synthesis_channels or config.channels, config.latent_channels
    return nn.Sequential(deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True),
                         deconv(n, n), GDN(n, inverse=True), deconv(n, 3))


class VAE(nn.Module):
    """Training model: ``forward(x, level) -> {"x_hat", "likelihoods"}``; ``analysis`` and ``synthesis`` are
    its two halves around the latent codec."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.g_a = analysis_transform(config)
        self.g_s = synthesis_transform(config)
        self.latent_codec = training_class(config.latent_codec).from_config(config)
        # log-domain gains keep them positive and make geometric interpolation linear
        # Start each level at the quantization step its lambda calls for (step ~ lambda^-1/2), so the levels
        # differ from the first step instead of after thousands of gain updates.
        lambdas = torch.tensor(config.lambdas, dtype=torch.float32)
        log_step = 0.5 * (lambdas.log() - lambdas.log().mean())
        self.log_gain = nn.Parameter(log_step[:, None].repeat(1, config.latent_channels))
        self.log_inverse_gain = nn.Parameter(-log_step[:, None].repeat(1, config.latent_channels))
        self._register_load_state_dict_pre_hook(lambda state, prefix, *_: legacy_state_keys(state, prefix))

    def per_level_parameters(self) -> tuple:
        """Names (as in ``state_dict``) of the parameters with one row per trained level: the gains, and those
        the latent codec names (``LatentCodec.per_level_parameters``)."""
        return ("log_gain", "log_inverse_gain") + tuple(
            f"latent_codec.{name}" for name in self.latent_codec.per_level_parameters())

    def gains(self, level: torch.Tensor):
        """Gain and inverse gain for (possibly fractional) zero-based levels, shape (B,) -> (B, M, 1, 1)."""
        log_gain = interpolate_levels(self.log_gain, level)
        log_inverse = interpolate_levels(self.log_inverse_gain, level)
        return log_gain.exp()[:, :, None, None], log_inverse.exp()[:, :, None, None]

    def analysis(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Images -> latents y scaled by their level's gain (float32), what the latent codec codes."""
        return self.g_a(x).float() * self.gains(level)[0]

    def synthesis(self, y_hat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Reconstructed latents (gained) -> images (float32)."""
        return self.g_s(y_hat * self.gains(level)[1]).float()

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> dict:
        """Training pass: noisy latents for the rate, straight-through rounded latents for the distortion."""
        y = self.analysis(x, level)
        # Under bf16 autocast only g_a and g_s run in bf16: the latent codec is cheap, and the rate and the
        # scale positions need float32 (a bf16 CDF difference loses the small likelihoods).
        with torch.autocast(x.device.type, enabled=False):
            y_hat, likelihoods = self.latent_codec(y, level)
        return {"x_hat": self.synthesis(y_hat, level), "likelihoods": likelihoods}


HyperpriorVAE = VAE  # the name from before the latent codecs


def rate_distortion_loss(x: torch.Tensor, output: dict, level: torch.Tensor, lambdas: tuple,
                         level_weighting: float = 0.0) -> dict:
    """lambda * 255^2 * MSE + bpp per image, averaged; also returns the parts for logging.

    Each image's objective is scaled by (lambda_mid / lambda) ** level_weighting before averaging. That leaves
    every level's own rate-distortion optimum where it is, but stops the high-lambda images, whose distortion
    gradients are up to 100x larger, from deciding the shared transforms alone.
    """
    num_pixels = x.shape[2] * x.shape[3]
    bits = -sum(likelihood.float().log2().flatten(1).sum(1) for likelihood in output["likelihoods"].values())
    bpp = bits / num_pixels
    mse = (output["x_hat"] - x).pow(2).flatten(1).mean(1)
    lambda_mid = math.exp(sum(math.log(v) for v in lambdas) / len(lambdas))  # geometric mean
    lambda_of_image = torch.tensor(lambdas, device=x.device)[level.round().long()]
    weights = (lambda_mid / lambda_of_image) ** level_weighting
    loss = (weights * (lambda_of_image * 255**2 * mse + bpp)).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean()}
