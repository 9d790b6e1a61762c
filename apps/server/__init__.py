"""``mimo-audio serve``: an OpenAI-compatible HTTP server over the serving engine (:mod:`mimo_audio.engine`)."""

from .app import ServerConfig, create_app, run_server

__all__ = ["ServerConfig", "create_app", "run_server"]
