"""Errors the CLI turns into one clear line on stderr and an exit code."""


class EgressError(Exception):
    """A failure the user can act on; the message names what and where."""

    exit_code = 1


class ConfigError(EgressError):
    """Bad usage or invalid configuration (exit code 2)."""

    exit_code = 2


class StoreUnavailable(EgressError):
    """The store cannot be reached right now (a database down or restarting): retry, exit 1."""

    exit_code = 1
