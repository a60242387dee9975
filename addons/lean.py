"""Imported first by the worker (``addons.runner``): mitmproxy's default addons stay unimported.

``mitmproxy/addons/__init__.py`` imports all of its ~40 addons (flask for the
onboarding app, ldap3 for proxyauth, ...) for ``default_addons()``, which only
mitmdump and mitmweb call; a worker loads five of them by module. Registering
the package without running its ``__init__`` lets those five import on their
own and saves about a third of the worker's start-up (0.35 s of 1.2 s here).
Under mitmdump (``-s``) the package is already imported and this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys


def _register_addons_package() -> None:
    if "mitmproxy.addons" in sys.modules:
        return
    import mitmproxy

    spec = importlib.util.find_spec("mitmproxy.addons")
    if spec is None or not spec.submodule_search_locations:
        return
    package = importlib.util.module_from_spec(spec)  # __path__ set; __init__ not executed
    sys.modules["mitmproxy.addons"] = package
    mitmproxy.addons = package  # type: ignore[attr-defined]


_register_addons_package()
