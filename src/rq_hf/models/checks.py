"""The argument checks shared by the configs, the models, the pipeline, evaluation and the scripts.

Each check raises `ValueError` naming the argument, what it must be and what it got ("`x` must ..., got ...")
and returns the value in its plain Python type. This file imports only the standard library, so that it
travels with the model files as flat remote code.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence


def is_number(value: object) -> bool:
    """A finite Python or NumPy real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    return "" if high is None else f" {'<' if high_open else '<='} {high}"


def check_int(
    name: str, value: Any, low: int | None = 1, high: int | None = None, allow_none: bool = False
) -> int | None:
    """`value` as an `int` in [`low`, `high`] (either bound may be None); None passes when `allow_none`."""
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        what = "a positive integer" if low == 1 and high is None else "an integer" + _interval(low, high, False, False)
        raise ValueError(f"`{name}` must be {what}{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "a finite number",
) -> float:
    """`value` as a `float`: finite, in the interval given by `low`/`high` (closed unless `*_open`)."""
    if (
        not is_number(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    ):
        raise ValueError(f"`{name}` must be {what}{_interval(low, high, low_open, high_open)}, got {value!r}.")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    """A probability in [0, 1) (dropout rates: 1 would drop everything)."""
    return check_number(name, value, 0, 1, high_open=True, what="a probability")


#: The ways the guidance scale can move over the code positions (`generate_codes(guidance_schedule=...)`).
GUIDANCE_SCHEDULES = ("constant", "linear", "cosine")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_per_depth(name: str, value: Any, depth: int, check: Callable[[str, Any], Any]) -> list:
    """One value (or None) broadcast to `depth` values, or a list of `depth`; each non-None one through `check`."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * depth
    if len(values) != depth:
        raise ValueError(f"`{name}` must be one value or a list of {depth} (one per depth), got {value!r}.")
    return [None if item is None else check(name, item) for item in values]


def check_sampling_args(
    top_k: Any, top_p: Any, temperature: Any, guidance_scale: Any, depth: int
) -> tuple[list[int | None], list[float | None], float, float]:
    """The sampling filters of `generate_codes` and the pipeline: `top_k` (ints >= 1) and `top_p` (in (0, 1]),
    one value or one per depth; `temperature` > 0; `guidance_scale` >= 0. Returns them normalized."""
    top_ks = check_per_depth("top_k", top_k, depth, check_int)
    top_ps = check_per_depth("top_p", top_p, depth, lambda n, p: check_number(n, p, 0, 1, low_open=True))
    temperature = check_number("temperature", temperature, 0, low_open=True)
    guidance_scale = check_number("guidance_scale", guidance_scale, 0)
    return top_ks, top_ps, temperature, guidance_scale


def check_generator(generator: Any, batch_size: int | None = None) -> Any:
    """A `torch.Generator`, None, or a list (tuple) of generators with one per sample (when `batch_size` is
    given); a tuple becomes a list."""
    import torch  # not at module level: the configs import this file without torch

    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators) or (
        isinstance(generator, (list, tuple)) and None in generators
    ):
        raise ValueError(f"`generator` must be a torch.Generator or a list of them, got {generator!r}.")
    if isinstance(generator, (list, tuple)):
        if batch_size is not None and len(generators) != batch_size:
            raise ValueError(
                f"`generator` list must have one generator per sample ({batch_size}), got {len(generators)}."
            )
        return generators
    return generator
