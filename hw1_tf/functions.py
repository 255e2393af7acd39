"""Registry of single-input, single-output, non-linear target functions (HW1-1, HW1-2).

Each entry is a numpy callable with the input domain it is sampled on (the slides: "constrain
the input domain"). `names()` lists them; `get(name)` raises a one-line error for unknown names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from hw1_tf.errors import Hw1Error


@dataclasses.dataclass(frozen=True)
class TargetFunction:
    name: str
    formula: str  # for figure titles and the README
    fn: Callable[[np.ndarray], np.ndarray]
    domain: tuple[float, float]
    smooth: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(x, dtype=np.float64))


_REGISTRY: dict[str, TargetFunction] = {}


def register(f: TargetFunction) -> TargetFunction:
    _REGISTRY[f.name] = f
    return f


register(TargetFunction(
    "sinc", r"$\sin(5\pi x)/(5\pi x)$",
    lambda x: np.sinc(5.0 * x),  # numpy's sinc is sin(pi t)/(pi t), equal to 1 at 0
    (0.0, 1.0), smooth=True))
register(TargetFunction(
    "sign", r"$\mathrm{sgn}(\sin(5\pi x))$",
    lambda x: np.sign(np.sin(5.0 * np.pi * x)),
    (0.0, 1.0), smooth=False))
register(TargetFunction(
    "exp_sin", r"$e^{(\sin(\pi x)+\cos(3\pi x))/2}+\sin(2x)$",
    lambda x: np.exp((np.sin(np.pi * x) + np.cos(3.0 * np.pi * x)) / 2.0) + np.sin(2.0 * x),
    (0.0, 4.0), smooth=True))
register(TargetFunction(
    "sawtooth", r"$2(5x - \lfloor 5x + 1/2 \rfloor)$",
    lambda x: 2.0 * (5.0 * x - np.floor(5.0 * x + 0.5)),
    (0.0, 1.0), smooth=False))


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> TargetFunction:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise Hw1Error(f"unknown function {name!r}; choose from {', '.join(names())}") from None
