"""Holds the rules the other addons enforce and reloads them when the store changes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from proxy.admission import Rules
from proxy.credentials.templates import template_field
from proxy.errors import ConfigError, EgressError, StoreUnavailable
from proxy.grants import GrantKey
from proxy.policy import Policy
from proxy.scrub import Guard, LiveSecrets
from proxy.service import policycache
from proxy.service.connectors import Connectors
from proxy.service.home import Home

logger = logging.getLogger(__name__)


def home_from_options() -> Home:
    root = ctx.options.egress_home
    env = Home.from_env()
    return env if not root else Home(Path(root), env.env)


class PolicySource:
    """The current ``Rules`` (policy, grant key, revocations), reloaded in the background.

    Connector changes bump the store's generation; we poll it off the event
    loop and rebuild the rules in a thread, so requests never wait on disk. A
    reload that fails keeps the previous rules in force. Between polls the
    watcher waits on ``store.wait_for_change`` (PostgreSQL's NOTIFY wakes it at
    once; SQLite just sleeps), so polling every second stays the safety net,
    not the latency (on PostgreSQL the poll is answered from the notifications,
    without a query). The watcher and the recorder open the store ``shared``:
    one database connection per worker.

    With a database store each policy loaded is also written to the policy
    cache (secrets still sealed), and a proxy that starts while the database
    is down runs from that cache until the database answers.
    """

    def __init__(self) -> None:
        self.rules = Rules(Policy())
        self.live = LiveSecrets()  # secrets obtained while running (OAuth2 tokens), guarded too
        self._live_for = self.rules.policy
        self._connectors: Connectors | None = None
        self._generation = -1
        self._task: asyncio.Task[None] | None = None
        self._store_down = False

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_home", str, "", "State directory (default: $EGRESS_HOME or ~/.egress).")
        loader.add_option(
            "egress_reload_interval", float, 1.0, "Seconds between checks for connector changes."
        )

    def configure(self, updated: set[str]) -> None:
        if "egress_home" not in updated:
            return
        try:
            if self._connectors:
                self._connectors.close()
            home = home_from_options()
            self._connectors = Connectors(home, home.store(lazy=True, shared=True))
            self._generation = -1
            try:
                self.reload()
            except StoreUnavailable as e:
                self._start_from_cache(e)
        except EgressError as e:
            raise exceptions.OptionsError(str(e)) from None

    def _grant_key(self) -> GrantKey | None:
        assert self._connectors
        try:
            return self._connectors.home.grant_key()
        except ConfigError:
            return None  # no grant key: every grant is refused

    def _start_from_cache(self, down: StoreUnavailable) -> None:
        assert self._connectors
        home = self._connectors.home
        cached = policycache.load(home) if policycache.wanted(home) else None
        if cached is None:
            raise StoreUnavailable(f"{down}; no policy cache at {policycache.path(home)} to start from")
        self.rules = Rules(self._connectors.policy_of(cached.connectors), self._grant_key(), cached.revoked)
        self._store_down = True
        logger.warning(
            "%s: serving the cached policy from %s (%s) until it answers",
            down,
            policycache.path(home),
            policycache.describe(cached),
        )

    @property
    def guard(self) -> Guard:
        """Every secret a client's request must not carry: the policy's and the live ones.

        Read on the event loop only (reloads run in a thread): live values of connectors a
        new policy dropped are forgotten here.
        """
        policy = self.rules.policy
        if policy is not self._live_for:
            self.live.retain(policy.routes)
            self._live_for = policy
        return self.live.guard(policy.guard)

    def reload(self) -> bool:
        """Rebuild the rules if the store changed; True if it did."""
        assert self._connectors
        store = self._connectors.store
        generation = store.generation()
        if generation == self._generation:
            return False
        policy, stored = self._connectors.load()
        revoked = store.revoked_grants()
        self.rules = Rules(policy, self._grant_key(), revoked)
        self._generation = generation
        home = self._connectors.home
        if policycache.wanted(home):
            try:
                policycache.save(home, policycache.snapshot(generation, stored, revoked, store.location))
            except OSError as e:
                logger.warning("cannot write the policy cache %s: %s", policycache.path(home), e.strerror)
        return True

    def store_refresh_token(self, connector: str, refresh_token: str) -> None:
        """Keep a refresh token the server rotated to, sealed, in the field its template names."""
        try:
            with Connectors(home_from_options()) as connectors:
                current, _ = connectors.get(connector)
                spec = current.inject.to_spec().get("oauth2", {})
                field = template_field(spec.get("refresh_token") or "")
                if field is None:
                    logger.warning(
                        "connector %s: rotated refresh token not kept (template is not one field)", connector
                    )
                    return
                connectors.update(current, {field: refresh_token}, merge=True)
        except EgressError as e:
            logger.error("connector %s: cannot store the rotated refresh token: %s", connector, e)

    async def running(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                store = self._connectors.store if self._connectors else None
                if store is not None and getattr(store, "pushes_changes", True):
                    await asyncio.to_thread(store.wait_for_change, ctx.options.egress_reload_interval)
                else:  # a store that only sleeps there (SQLite): sleep here, so a stop need not wait for it
                    await asyncio.sleep(ctx.options.egress_reload_interval)
                changed = await asyncio.to_thread(self.reload)
                if self._store_down:
                    self._store_down = False
                    logger.warning("store reachable again: connectors loaded from it")
                if changed:
                    logger.info("connectors reloaded: %d in force", len(self.rules.policy))
            except StoreUnavailable as e:
                if not self._store_down:  # once per outage, not once a second
                    self._store_down = True
                    logger.error("%s: previous connectors stay in force, retrying", e)
            except EgressError as e:
                logger.error("connector reload failed, previous connectors stay in force: %s", e)
            except Exception as e:  # keep watching whatever happens
                logger.error(
                    "connector reload failed (%s), previous connectors stay in force", type(e).__name__
                )

    def done(self) -> None:
        if self._task:
            self._task.cancel()
        if self._connectors:
            self._connectors.close()
