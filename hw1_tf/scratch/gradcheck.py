"""Centered finite differences and relative errors, the reference for every backward pass.

Run in float64: with h = 1e-6 the truncation error is O(h^2) ~ 1e-12 and the rounding error
~ eps / h ~ 1e-10, so a correct gradient shows relative errors of 1e-7 or smaller (the report's
tables show 1e-9 .. 1e-6), while a wrong one shows errors near 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def rel_error(x, y, eps: float = 1e-10) -> float:
    """max |x - y| / max(|x| + |y|, eps) elementwise, the report's relative error."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(eps, np.abs(x) + np.abs(y))))


def numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6
                     ) -> np.ndarray:
    """d f(x) / dx of a scalar function by centered differences (x is perturbed in place and
    restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = float(f(x))
        x[i] = old - h
        fm = float(f(x))
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
        it.iternext()
    return grad


def numeric_gradient_array(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                           dout: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """The gradient of sum(f(x) * dout) w.r.t. x: what a layer's backward(dout) must return."""
    dout = np.asarray(dout, np.float64)
    return numeric_gradient(lambda v: np.sum(np.asarray(f(v), np.float64) * dout), x, h)


def check_layer(forward: Callable, backward: Callable, inputs: dict[str, np.ndarray],
                dout: np.ndarray, h: float = 1e-6) -> dict[str, float]:
    """Relative errors of `backward` against centered differences, per input.

    `forward(**inputs) -> (out, cache)` and `backward(dout, cache) -> {name: grad}`; `inputs`
    are float64 arrays (perturbed in place, restored). Returns {name: relative error}.
    """
    _, cache = forward(**inputs)
    analytic = backward(dout, cache)
    errors = {}
    for name, value in inputs.items():
        def f(_, name=name):
            return np.asarray(forward(**inputs)[0])

        numeric = numeric_gradient_array(f, value, dout, h)
        errors[name] = rel_error(numeric, np.asarray(analytic[name]))
    return errors


def format_errors(title: str, errors: dict[str, float]) -> str:
    """One line in the report's format: `title: dx error: 5.5e-10 dw error: ...`."""
    return f"{title}: " + " ".join(f"d{k} error: {v:.3e}" for k, v in errors.items())
