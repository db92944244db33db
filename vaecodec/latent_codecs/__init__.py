"""Latent codecs: the entropy models between the transforms, each with a training and a coding side.

See ``base.py`` for the interface. ``LATENT_CODECS`` maps the type name a weights file's config gives
(``ModelConfig.latent_codec``) to the codec's (training class, coding class); a new codec module adds itself
with ``register`` and is imported below.
"""

from .base import LatentCodec, LatentCoder, LatentRate, Quantized, Symbols

LATENT_CODECS = {}


def register(training_class, coding_class):
    LATENT_CODECS[training_class.type_name] = (training_class, coding_class)


def training_class(type_name: str):
    return _lookup(type_name)[0]


def coding_class(type_name: str):
    return _lookup(type_name)[1]


def _lookup(type_name: str):
    if type_name not in LATENT_CODECS:
        from ..errors import InvalidFile

        raise InvalidFile(f"unknown latent codec '{type_name}' (this vaecodec has {', '.join(sorted(LATENT_CODECS))})")
    return LATENT_CODECS[type_name]


from . import hyperprior  # noqa: E402  (each codec module registers itself)

register(hyperprior.HyperpriorLatentCodec, hyperprior.HyperpriorCoder)

from . import channel_conditional  # noqa: E402

register(channel_conditional.ChannelConditionalLatentCodec, channel_conditional.ChannelConditionalCoder)
register(channel_conditional.ChannelCheckerboardLatentCodec, channel_conditional.ChannelCheckerboardCoder)
