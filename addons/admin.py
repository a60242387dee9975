"""Serve the admin listener (/healthz, /metrics, the admin API) from this process (mitmdump -s, or a lone worker)."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from addons.record import Recorder
from addons.source import home_from_options
from proxy.errors import ConfigError
from proxy.runtime.adminserver import AdminServer
from proxy.service.admin_tokens import check_bootstrap
from proxy.service.monitoring import connector_health

logger = logging.getLogger(__name__)


class Admin:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.server: AdminServer | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_admin", str, "", "Admin listen address HOST:PORT (empty: off).")
        loader.add_option(
            "egress_admin_metrics_token", bool, False, "/metrics needs an all-workspace admin token."
        )

    def running(self) -> None:
        if not ctx.options.egress_admin:
            return
        home = home_from_options()
        self.recorder.metrics.watch_health(lambda: connector_health(home_from_options()))
        try:
            check_bootstrap(home.env)
            self.server = AdminServer(
                ctx.options.egress_admin,
                self.recorder.metrics.render,
                lambda: True,
                home,
                metrics_token=ctx.options.egress_admin_metrics_token,
            ).start()
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from None
        logger.info("admin endpoint on http://%s (/healthz, /metrics, /api/v1)", self.server.address)

    def done(self) -> None:
        if self.server:
            self.server.stop()
