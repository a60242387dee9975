"""egress-proxy: make aiohttp honour HTTPS_PROXY (``egress env`` puts this first on PYTHONPATH).

aiohttp's ClientSession ignores the environment unless ``trust_env=True``, so
code run through the proxy would go direct (and fail). This makes True the
default, when and only if aiohttp is imported (a lazy import hook, so other
programs start as fast as before), then runs the sitecustomize this file
shadows. Nothing here may stop the interpreter from starting.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not `typing`'s: importing typing would cost every interpreter start ~4 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


def _patch(module: object) -> None:
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


class _AiohttpHook:
    """A meta-path finder that patches aiohttp right after its first import."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "aiohttp" or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
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
                _patch(module)
            except Exception:  # never break the program over a convenience
                pass

        loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


def _chain() -> None:
    """Run the next sitecustomize on sys.path (a distribution's or a venv's), as Python would have."""
    import importlib.machinery
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    if "aiohttp" in sys.modules:
        _patch(sys.modules["aiohttp"])
    else:
        sys.meta_path.insert(0, _AiohttpHook())
except Exception:
    pass
try:  # noqa: SIM105
    _chain()
except Exception:
    pass
