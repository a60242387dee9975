"""egress-proxy: clients that ignore the proxy's variables (``egress env`` and ``egress exec``
put this first on PYTHONPATH).

aiohttp's ClientSession ignores the environment unless ``trust_env=True``, so
code run through the proxy would go direct (and fail): with a proxy variable
set (``egress env``), True becomes the default. stripe verifies with the CA
bundle it ships, never SSL_CERT_FILE, so it refuses the proxy's certificates:
its ``ca_bundle_path`` becomes SSL_CERT_FILE while it is still stripe's own.
Each patch happens when and only if its module is imported (a lazy import
hook, so other programs start as fast as before); then the sitecustomize this
file shadows runs. Nothing here may stop the interpreter from starting.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `typing`'s: importing typing would cost every interpreter start ~4 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


def _patch_aiohttp(module: object) -> None:
    if not (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")):
        return  # no proxy to trust (`egress exec` intercepts instead): aiohttp as it was
    import functools

    cls = getattr(module, "ClientSession", None)
    init = getattr(cls, "__init__", None)
    if cls is None or init is None or getattr(init, "_egress_trust_env", False):
        return

    @functools.wraps(init)
    def __init__(self: object, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("trust_env", True)
        init(self, *args, **kwargs)

    __init__._egress_trust_env = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _patch_stripe(module: object) -> None:
    bundle = os.environ.get("SSL_CERT_FILE", "")
    shipped = getattr(module, "ca_bundle_path", None)
    home = os.path.dirname(getattr(module, "__file__", None) or "")
    if bundle and os.path.isfile(bundle) and isinstance(shipped, str) and home and shipped.startswith(home):
        module.ca_bundle_path = bundle  # type: ignore[attr-defined]


_PATCHES: dict[str, Callable[[object], None]] = {"aiohttp": _patch_aiohttp, "stripe": _patch_stripe}


class _Hook:
    """A meta-path finder that patches each module of _PATCHES right after its first import."""

    def __init__(self, pending: dict[str, Callable[[object], None]]) -> None:
        self.pending = pending

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        patch = self.pending.pop(name, None)  # once, and not for the lookup below
        if patch is None:
            return None
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
            loader = getattr(spec, "loader", None)
            run = getattr(loader, "exec_module", None)
        except Exception:
            return None  # the ordinary finders try again, unpatched
        if run is None:
            return spec

        def exec_module(module: object) -> None:
            run(module)
            try:  # noqa: SIM105 (no contextlib import at every interpreter start)
                patch(module)
            except Exception:  # never break the program over a convenience
                pass

        loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


def _chain() -> None:
    """Run the next sitecustomize on sys.path (a distribution's or a venv's), as Python would have."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    _pending: dict[str, Callable[[object], None]] = {}
    for _name, _patch in _PATCHES.items():
        if _name in sys.modules:
            _patch(sys.modules[_name])
        else:
            _pending[_name] = _patch
    if _pending:
        sys.meta_path.insert(0, _Hook(_pending))
except Exception:
    pass
try:  # noqa: SIM105
    _chain()
except Exception:
    pass
