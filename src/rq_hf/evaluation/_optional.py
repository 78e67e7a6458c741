"""Optional dependencies of the metrics (the `eval` extra), imported only when a metric needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

EVAL_INSTALL_HINT = "pip install 'rq-hf[eval]'"


def require(module: str, package: str | None = None) -> ModuleType:
    """Import `module` or raise an `ImportError` that says how to install it.

    Args:
        module (`str`): the module to import, e.g. `"torchmetrics"`.
        package (`str`, *optional*): the PyPI name, when it differs from the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This metric needs `{module}`, which is part of the `eval` extra: {EVAL_INSTALL_HINT} "
            f"(or pip install {package or module})."
        ) from error
