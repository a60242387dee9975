"""Errors the CLI turns into one clear line on stderr and an exit code (the admin API, into a status)."""

from __future__ import annotations


class EgressError(Exception):
    """A failure the user can act on; the message names what and where."""

    exit_code = 1


class ConfigError(EgressError):
    """Bad usage or invalid configuration (exit code 2; HTTP 400 in the admin API).

    ``field`` names the input at fault (``name``, ``patterns``, ``inject``,
    ``secret``, ...) where the raiser knows it, so the API can point a form at
    it while the CLI keeps printing the same one-line message.
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ConfigError):
    """The named thing does not exist (in this workspace): HTTP 404."""


class Conflict(ConfigError):
    """The name is taken: HTTP 409."""


class StoreUnavailable(EgressError):
    """The store cannot be reached right now (a database down or restarting): retry, exit 1."""

    exit_code = 1
