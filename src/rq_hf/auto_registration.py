"""Make transformers' `AutoConfig` / `AutoModel` know "rq_transformer" without importing transformers.

`import rq_hf` must stay light (no torch, transformers or diffusers), yet `AutoConfig.from_pretrained(path)` and
`AutoModel.from_pretrained(path)` must work afterwards. transformers has no plugin entry point, so an import hook
waits for transformers' own Auto modules instead:

- when `transformers.models.auto.configuration_auto` has run, [`RQTransformerConfig`] is registered with
  `AutoConfig` (its file needs only `PreTrainedConfig`, which that module has just imported);
- when `transformers.models.auto.modeling_auto` has run, `AutoModel` gets a stand-in that imports
  [`RQTransformerForCausalImageModeling`] (torch, `transformers.modeling_utils`) only when it is first called:
  `modeling_auto` is sometimes imported in the middle of diffusers' or transformers' own imports, when the
  modeling file could not be imported yet. Importing the modeling file replaces the stand-in with the class.

Modules already imported when rq_hf is are registered at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any, Callable

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def register_config() -> None:
    """Register [`RQTransformerConfig`] with `AutoConfig` (once)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, AutoConfig

    from .models.configuration_rq_transformer import RQTransformerConfig

    if RQTransformerConfig.model_type not in CONFIG_MAPPING:
        AutoConfig.register(RQTransformerConfig.model_type, RQTransformerConfig)


def register_model(model_class: type | None = None) -> None:
    """Register `model_class` with `AutoModel`, or, when it is `None`, a stand-in that imports it on first use.

    A stand-in never replaces a registered class; a class replaces the stand-in.
    """
    from transformers.models.auto.modeling_auto import AutoModel

    from .models.configuration_rq_transformer import RQTransformerConfig

    register_config()
    registered = AutoModel._model_mapping.get(RQTransformerConfig, None)
    if model_class is None:
        if registered is None:
            AutoModel.register(RQTransformerConfig, _LazyRQTransformerModel)
    elif registered is not model_class:
        AutoModel.register(RQTransformerConfig, model_class, exist_ok=True)


def _model_class() -> type:
    from .models.modeling_rq_transformer import RQTransformerForCausalImageModeling

    return RQTransformerForCausalImageModeling


class _LazyRQTransformerModel:
    """What `AutoModel` calls for an RQ-Transformer config until the modeling file is imported."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        return _model_class().from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, *args: Any, **kwargs: Any) -> Any:
        return _model_class()._from_config(*args, **kwargs)


class _AfterImport(importlib.abc.Loader):
    """Runs a module with its own loader, then calls `callback`."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[], None]) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.callback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Finds the two Auto modules with the normal finders and registers once each has run."""

    def __init__(self, callbacks: dict[str, Callable[[], None]]) -> None:
        self.callbacks = callbacks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        callback = self.callbacks.pop(fullname, None)
        if callback is None:
            return None
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterImport(spec.loader, callback)
        return spec


def register_when_transformers_loads() -> None:
    """Register now what transformers has already imported, and the rest as soon as it imports it."""
    callbacks = {_CONFIG_AUTO: register_config, _MODELING_AUTO: register_model}
    pending = {}
    for name, callback in callbacks.items():
        if name in sys.modules:
            callback()
        else:
            pending[name] = callback
    if pending and not any(isinstance(finder, _RegisterWhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenImported(pending))
