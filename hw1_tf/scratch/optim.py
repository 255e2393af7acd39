"""Update rules written out: SGD, SGD + momentum (classical or Nesterov), RMSProp, Adagrad, Adam.

Each rule is a pure function of tensors, `step(w, dw, slots, learning_rate, iteration) ->
(next_w, next_slots)`, so the Solver can run it inside a compiled step and the tests can compare
it step for step with `keras.optimizers` on the same gradients. The formulas are Keras 3.15's
exactly (keras/src/optimizers/*.py `update_step`), epsilon placement included:

  SGD        w -= lr * g
  momentum   v = mu * v - lr * g;  w += v                      (Nesterov: w += mu * v - lr * g)
  RMSProp    s = rho * s + (1 - rho) * g^2;  w -= lr * g / sqrt(s + eps)
  Adagrad    a += g^2 (a starts at 0.1);  w -= lr * g / sqrt(a + eps)
  Adam       t = iteration + 1;  m += (1 - b1) (g - m);  v += (1 - b2) (g^2 - v)
             w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

(The report's RMSProp and Adam put epsilon outside the square root and bias-correct m and v
separately; the two forms differ only in where epsilon acts.)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """Base: plain SGD (no slots)."""

    name = "sgd"
    slot_names: ClassVar[tuple[str, ...]] = ()

    def init_slots(self, w) -> dict[str, tf.Tensor]:
        return {name: tf.zeros_like(w) for name in self.slot_names}

    def step(self, w, dw, slots, learning_rate, iteration):
        lr = tf.cast(learning_rate, w.dtype)
        return w - lr * dw, {}

    def hyperparams(self) -> dict[str, float]:
        return dataclasses.asdict(self)


SGD = UpdateRule


@dataclasses.dataclass(frozen=True)
class Momentum(UpdateRule):
    momentum: float = 0.9
    nesterov: bool = False
    name = "sgd_momentum"
    slot_names: ClassVar[tuple[str, ...]] = ("velocity",)

    def step(self, w, dw, slots, learning_rate, iteration):
        lr = tf.cast(learning_rate, w.dtype)
        mu = tf.cast(self.momentum, w.dtype)
        v = mu * slots["velocity"] - lr * dw
        next_w = w + (mu * v - lr * dw if self.nesterov else v)
        return next_w, {"velocity": v}


@dataclasses.dataclass(frozen=True)
class RMSProp(UpdateRule):
    rho: float = 0.9
    epsilon: float = 1e-7
    name = "rmsprop"
    slot_names: ClassVar[tuple[str, ...]] = ("velocity",)

    def step(self, w, dw, slots, learning_rate, iteration):
        lr = tf.cast(learning_rate, w.dtype)
        s = self.rho * slots["velocity"] + (1 - self.rho) * tf.square(dw)
        return w - lr * dw / tf.sqrt(s + self.epsilon), {"velocity": s}


@dataclasses.dataclass(frozen=True)
class Adagrad(UpdateRule):
    initial_accumulator_value: float = 0.1
    epsilon: float = 1e-7
    name = "adagrad"
    slot_names: ClassVar[tuple[str, ...]] = ("accumulator",)

    def init_slots(self, w):
        return {"accumulator": tf.fill(tf.shape(w), tf.cast(self.initial_accumulator_value,
                                                            w.dtype))}

    def step(self, w, dw, slots, learning_rate, iteration):
        lr = tf.cast(learning_rate, w.dtype)
        a = slots["accumulator"] + tf.square(dw)
        return w - lr * dw / tf.sqrt(a + self.epsilon), {"accumulator": a}


@dataclasses.dataclass(frozen=True)
class Adam(UpdateRule):
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    name = "adam"
    slot_names: ClassVar[tuple[str, ...]] = ("m", "v")

    def step(self, w, dw, slots, learning_rate, iteration):
        lr = tf.cast(learning_rate, w.dtype)
        t = tf.cast(iteration, w.dtype) + 1
        alpha = lr * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, w.dtype), t)) / (
            1 - tf.pow(tf.cast(self.beta_1, w.dtype), t))
        m = slots["m"] + (dw - slots["m"]) * (1 - self.beta_1)
        v = slots["v"] + (tf.square(dw) - slots["v"]) * (1 - self.beta_2)
        return w - alpha * m / (tf.sqrt(v) + self.epsilon), {"m": m, "v": v}


UPDATE_RULES = {
    "sgd": SGD,
    "sgd_momentum": Momentum,
    "nesterov": lambda **kw: Momentum(nesterov=True, **kw),
    "rmsprop": RMSProp,
    "adagrad": Adagrad,
    "adam": Adam,
}


def get(name: str, **hyperparams) -> UpdateRule:
    """An update rule by name (sgd | sgd_momentum | nesterov | rmsprop | adagrad | adam)."""
    if name not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {name!r}; choose one of {', '.join(UPDATE_RULES)}")
    return UPDATE_RULES[name](**hyperparams)
