"""Use cases shared by the CLI and the admin API: connectors, grants, monitoring, CA."""
