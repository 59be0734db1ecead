"""Third-party modules imported on first use, so start-up pays only for what runs.

``capsule --version`` and ``import capsule`` must not load numpy, hnswlib,
cryptography or rich (about half a second of CPU between them): a command that
never touches a vector, a key or a table should not pay for them. A module that
uses one of them only inside functions binds a proxy at import time::

    if TYPE_CHECKING:
        import numpy as np
    else:
        np = lazy("numpy")

and the real module is imported the first time an attribute of the proxy is
read. Type checkers see the real import. ``sys.modules`` holds the real module
only once it is loaded, so "is numpy loaded?" keeps its plain meaning (a test
asserts what ``capsule --version`` loads).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Lazy(ModuleType):
    def __getattr__(self, attr: str) -> Any:  # only called for names not yet in __dict__
        mod = importlib.import_module(self.__name__)
        # Copy the namespace so later reads are plain attribute hits; a name the
        # module makes on demand (numpy's lazy submodules) still comes through here.
        self.__dict__.update(mod.__dict__)
        return getattr(mod, attr)


def lazy(name: str) -> Any:
    """A stand-in for ``import name`` that imports on the first attribute read."""
    return _Lazy(name)


__all__ = ["lazy"]
