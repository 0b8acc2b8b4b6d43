"""Named errors that the CLI, the API and the web page turn into clear messages.

Every user mistake (a bad file, a bad option, a missing model) raises a subclass of
:class:`VeilError`; anything else is a bug and may show a traceback.
"""


class VeilError(Exception):
    """Base class for errors a user can fix; ``str(err)`` is the message to show."""

    exit_code = 1


class OptionsError(VeilError):
    """An option value is out of range or unknown."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ModelError(VeilError):
    """A model is missing, tampered with or cannot be fetched."""

    exit_code = 3


class ImageError(VeilError):
    """An input file is not a supported, sane image (corrupt, too large, a bomb...)."""

    exit_code = 4


class VideoError(VeilError):
    """An input video cannot be anonymized (truncated, corrupt, no video frames, an
    encoder that is not available...); the message names the reason."""

    exit_code = 4
