"""Errors users can cause, each with its own process exit code for the command line.

Every problem with user input (a file that is not a valid .vae, an image we do not code, a path we will not
overwrite) raises a subclass of ``VaecodecError``; the CLI prints its message on one line and exits with
``exit_code``. Anything else is a bug. Text that comes from a file or a peer goes through ``printable``
before it is printed or put into a message.
"""


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe to print on one terminal line: control, format and other unprintable characters
    (ESC, CR, LF, bidirectional overrides...) as Python escapes, and at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[:limit] + "..."


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


class ImageTooLarge(InvalidFile):
    """A valid file whose image is over the caller's pixel limit: refused before decoding."""


class ModelNotFound(VaecodecError):
    exit_code = 7
