"""The CLI fixtures (a clean home, an in-process egress runner) for every CLI test module."""

from tests.cli.test_cli import egress, home  # noqa: F401
