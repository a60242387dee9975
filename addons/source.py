"""Holds the Policy the other addons consult and reloads it when the store changes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from proxy.errors import EgressError
from proxy.grants import GrantKey
from proxy.home import Home
from proxy.policy import Policy
from proxy.registry import Registry

logger = logging.getLogger("egress")


class PolicySource:
    """The current Policy (and grant key and revocations), reloaded in the background.

    Connector changes made with the CLI bump the store's generation; we poll it
    off the event loop and rebuild the Policy in a thread, so requests never
    wait on disk. A reload that fails keeps the previous Policy in force.
    """

    def __init__(self) -> None:
        self.policy = Policy()
        self.revoked: frozenset[str] = frozenset()
        self.grant_key: GrantKey | None = None
        self._registry: Registry | None = None
        self._generation = -1
        self._task: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_home", str, "", "State directory (default: $EGRESS_HOME or ~/.egress).")
        loader.add_option(
            "egress_reload_interval", float, 1.0, "Seconds between checks for connector changes."
        )

    def configure(self, updated: set[str]) -> None:
        if "egress_home" not in updated:
            return
        root = ctx.options.egress_home
        home = Home.from_env() if not root else Home(Path(root), Home.from_env().env)
        try:
            if self._registry:
                self._registry.close()
            self._registry = Registry(home)
            self._reload()
        except EgressError as e:
            raise exceptions.OptionsError(str(e)) from None

    def _reload(self) -> bool:
        assert self._registry
        generation = self._registry.store.generation()
        if generation == self._generation:
            return False
        policy = self._registry.policy()
        revoked = self._registry.store.revoked_grants()
        key = self._registry.grant_key()
        self.policy, self.revoked, self.grant_key = policy, revoked, key
        self._generation = generation
        return True

    async def running(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.egress_reload_interval)
            try:
                if await asyncio.to_thread(self._reload):
                    logger.info("connectors reloaded: %d in force", len(self.policy))
            except EgressError as e:
                logger.error("connector reload failed, previous connectors stay in force: %s", e)
            except Exception as e:  # keep watching whatever happens
                logger.error(
                    "connector reload failed (%s), previous connectors stay in force", type(e).__name__
                )

    def done(self) -> None:
        if self._task:
            self._task.cancel()
        if self._registry:
            self._registry.close()
