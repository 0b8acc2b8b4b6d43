"""The veil HTTP API: ``veil serve`` runs :func:`create_app` under uvicorn."""

from veil.server.config import ServerConfig, ServerLimits

__all__ = ["ServerConfig", "ServerLimits", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - lazy: keep `import veil.server` light
    from veil.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)
