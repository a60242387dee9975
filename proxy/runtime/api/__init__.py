"""The admin API (``/api/v1``), /healthz, /metrics and the dashboard, as one ASGI app."""

from proxy.runtime.api.app import AdminConfig, create_app

__all__ = ["AdminConfig", "create_app"]
