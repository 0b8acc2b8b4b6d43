"""Domain errors of the job service, free of HTTP: the routes' problem handler
(:func:`veil.server.problems.install`) maps each to its status in one place."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the job service's errors; ``retry_after`` is a hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class NotFound(ServiceError):
    """No such job or image for this caller (or it expired or was deleted)."""


class NotReady(ServiceError):
    """The job or image is still queued or processing."""


class ImageFailed(ServiceError):
    """The image asked for failed; the message gives the reason."""


class NoImages(ServiceError):
    """A finished job has no image left to put in an archive."""


class TooManyJobs(ServiceError):
    """The key already has its limit of unfinished jobs."""


class QuotaExceeded(ServiceError):
    """The key's daily image quota does not cover the request."""


class Busy(ServiceError):
    """The server cannot take the work now (memory, disk, queue, sync slots)."""

    def __init__(self, message: str, *, retry_after: int | None = None, slug: str = "server-busy"):
        super().__init__(message, retry_after=retry_after)
        self.slug = slug


class Unavailable(ServiceError):
    """A part the service needs is down (the pipeline, Redis); retry later."""

    def __init__(self, message: str, *, retry_after: int | None = None, slug: str = "unavailable"):
        super().__init__(message, retry_after=retry_after)
        self.slug = slug
