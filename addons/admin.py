"""Serve /healthz and /metrics from this process (mitmdump -s, or a lone worker)."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from addons.record import Recorder
from addons.source import home_from_options
from proxy.errors import ConfigError
from proxy.runtime.adminserver import AdminServer
from proxy.service.monitoring import connector_health

logger = logging.getLogger(__name__)


class Admin:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.server: AdminServer | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_admin", str, "", "Admin listen address HOST:PORT (empty: off).")

    def running(self) -> None:
        if not ctx.options.egress_admin:
            return
        self.recorder.metrics.watch_health(lambda: connector_health(home_from_options()))
        try:
            self.server = AdminServer(
                ctx.options.egress_admin, self.recorder.metrics.render, lambda: True
            ).start()
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from None
        logger.info("admin endpoint on http://%s (/healthz, /metrics)", self.server.address)

    def done(self) -> None:
        if self.server:
            self.server.stop()
