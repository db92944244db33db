"""Errors users can cause, each with its own process exit code for the command line.

Every problem with user input (a file that is not a valid .vae, an image we do not code, a path we will not
overwrite) raises a subclass of ``VaecodecError``; the CLI prints its message on one line and exits with
``exit_code``. Anything else is a bug.
"""


class VaecodecError(Exception):
    exit_code = 1


class UsageError(VaecodecError):
    """Bad arguments: unknown quality, missing file, output exists without --force."""

    exit_code = 2


class UnsupportedImage(VaecodecError):
    """An input image that cannot be read or that vaecodec refuses to code (e.g. transparency, 16 bit)."""

    exit_code = 3


class InvalidFile(VaecodecError):
    """Not a valid .vae or latents file: bad magic, truncated, corrupted (CRC), inconsistent header."""

    exit_code = 4


class UnsupportedVersion(InvalidFile):
    """A format version newer than this vaecodec can read."""

    exit_code = 5


class ModelMismatch(InvalidFile):
    """A valid file written with different model weights than the ones loaded."""

    exit_code = 6


class ModelNotFound(VaecodecError):
    exit_code = 7
