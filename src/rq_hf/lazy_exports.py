"""Lazy package attributes (PEP 562), as transformers' and diffusers' `_LazyModule` give their packages."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module `__getattr__` and `__dir__` of `package` that import each name of `exports` on first access.

    Args:
        package (`str`):
            The package's `__name__`.
        exports (`dict[str, str]`):
            Public name -> module relative to `package` that defines it (e.g. `"models.autoencoder_rqvae"`).
    """

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_name}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
