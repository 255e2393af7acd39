"""Curvature products of a dense Keras net from its linearisation, computed once per theta.

A Hessian-vector product by double backprop (or forward-over-reverse) runs the forward pass,
the backward pass and their derivative for every vector. For a chain of Dense layers with
elementwise activations the first two do not depend on the vector: `Linearisation` computes
them once per parameter vector, per batch, and keeps what the products read:

  a_l        the layers' inputs (a_0 = x)
  phi'_l     the activations' derivatives at the pre-activations z_l (phi''_l where nonzero)
  delta_l    dL/dz_l, the backward pass
  Lambda_n   d^2 L / dz_L^2 per example (the loss head: the last layer's activation and the
             loss, e.g. softmax cross-entropy; C x C for C outputs)

A product H v is then the derivative of the backward pass along v alone (Pearlmutter's R-op,
written out for the chain), with v = (V_l, c_l) per layer:

  forward     zdot_l = a_{l-1} V_l + c_l + adot_{l-1} W_l,   adot_l = phi'_l * zdot_l
  head        deltadot_L = Lambda zdot_L
  backward    deltadot_{l-1} = (deltadot_l W_l^T + delta_l V_l^T) * phi'_{l-1}
                               + (delta_l W_l^T) * phi''_{l-1} * zdot_{l-1}
  gradient    (H v)_{W_l} = a_{l-1}^T deltadot_l + adot_{l-1}^T delta_l,
              (H v)_{c_l} = sum_n deltadot_l

The same matmuls as one double backprop's second half, and nothing of its first half. Dropping
the delta terms gives the generalised Gauss-Newton product G v = J^T Lambda J v.

Exact diagonals. With Lambda_n = U_n diag(lambda_n) U_n^T, back-propagating the C columns of
U_n gives each example's Jacobian rows J_n^T u_nk, and a Dense layer's per-example gradient is
an outer product, so diag(G) for W_l is (a_{l-1}^2)^T (sum_k lambda_k delta_k^2): the exact GGN
diagonal at about the cost of one product. When every hidden activation is piecewise linear on
the data (phi'' = 0: relu, linear, leaky relu) the net's outputs are linear in each weight
tensor, so the Hessian's diagonal blocks equal the GGN's and the Hessian's diagonal and trace
are exact too (`exact_hessian_diagonal`), no probes needed.

Applies to `keras.Sequential` models of Dense, elementwise activation, Flatten, Dropout and
InputLayer layers, on one replica; `dense_chain` says why not otherwise, and the callers
(hw1_tf.hessian) fall back to double backprop.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

# Activations that act elementwise (their derivatives are computed by autodiff at setup).
ELEMENTWISE = {"relu", "linear", "tanh", "sigmoid", "elu", "selu", "softplus", "softsign",
               "swish", "silu", "gelu", "leaky_relu", "relu6", "hard_sigmoid",
               "hard_silu", "hard_swish", "exponential", "mish", "log_sigmoid", "celu"}
ELEMENTWISE_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                      keras.layers.Activation)
IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.InputLayer, keras.layers.GaussianNoise,
                   keras.layers.GaussianDropout, keras.layers.AlphaDropout)

# The cache's budget: above it the products fall back to double backprop.
MAX_CACHE_MB = 2048.0


@dataclasses.dataclass
class Chain:
    """A Sequential dense net read as layers: per Dense layer the indices of its kernel and
    bias in the flat parameter order (bias None without one) and the elementwise functions
    applied after it (the last layer's go into the loss head)."""

    kernels: list[int]
    biases: list[int | None]
    activations: list[list]
    widths: list[int]


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def dense_chain(model, variables) -> tuple[Chain | None, str]:
    """(Chain, "") when `model` is a Sequential chain of Dense layers with elementwise
    activations whose trainable variables are exactly `variables`; (None, why) otherwise."""
    if not isinstance(model, keras.Sequential):
        return None, f"{type(model).__name__} is not a keras.Sequential"
    index = {id(v): i for i, v in enumerate(variables)}
    kernels, biases, activations, widths = [], [], [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            if layer.kernel is None or id(layer.kernel) not in index:
                return None, f"{layer.name}'s kernel is not a trained parameter"
            kernels.append(index[id(layer.kernel)])
            biases.append(index.get(id(layer.bias)) if layer.use_bias else None)
            if layer.use_bias and biases[-1] is None:
                return None, f"{layer.name}'s bias is not a trained parameter"
            widths.append(int(layer.units))
            activations.append([])
            fn = layer.activation
            if fn is not None and _activation_name(fn) != "linear":
                activations[-1].append(fn)
                if _activation_name(fn) not in ELEMENTWISE and layer is not _last_dense(model):
                    return None, f"{layer.name}'s activation {_activation_name(fn)} is not " \
                                 "elementwise"
        elif isinstance(layer, ELEMENTWISE_LAYERS):
            if not kernels:
                return None, f"{layer.name} comes before the first Dense layer"
            if isinstance(layer, keras.layers.Activation) and \
                    _activation_name(layer.activation) not in ELEMENTWISE and \
                    layer is not model.layers[-1]:
                return None, f"{layer.name}'s activation is not elementwise"
            activations[-1].append(layer)
        elif isinstance(layer, keras.layers.Flatten):
            if kernels:
                return None, f"{layer.name} (Flatten) comes after a Dense layer"
        elif isinstance(layer, IDENTITY_LAYERS):
            continue  # the identity at inference
        else:
            return None, f"{layer.name} ({type(layer).__name__}) is not a Dense layer"
        if layer.weights and not isinstance(layer, keras.layers.Dense):
            return None, f"{layer.name} has weights"
    if not kernels:
        return None, "no Dense layer"
    used = {i for i in kernels} | {i for i in biases if i is not None}
    if len(used) != len(variables):
        return None, "trainable variables outside the Dense layers"
    return Chain(kernels, biases, activations, widths), ""


def _last_dense(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]


def _apply(fns, z):
    for fn in fns:
        z = fn(z)
    return z


def cache_bytes(chain: Chain, examples: int, itemsize: int) -> int:
    """What a Linearisation keeps, roughly: per example and hidden unit its input, its
    activation's derivative(s) and its delta; the head's C x C per example."""
    hidden = sum(chain.widths[:-1])
    out = chain.widths[-1]
    return examples * itemsize * (4 * hidden + 2 * out + out * out)


class Linearisation:
    """The cached linearisation of a FlatLoss with a dense chain at one theta (see the module
    docstring): `product` / `block_product` of the Hessian, GGN or empirical Fisher,
    `ggn_diagonal`, `fisher_diagonal`, `exact_hessian_diagonal`."""

    def __init__(self, flat_loss, chain: Chain, theta: np.ndarray):
        self.flat = flat_loss
        self.chain = chain
        self.theta = np.array(theta, flat_loss.np_dtype)
        self.dtype = flat_loss.dtype
        xs, ys, ws = flat_loss._data
        theta_t = tf.convert_to_tensor(self.theta)
        setup = tf.function(self._setup_batch)
        self.batches = [setup(theta_t, xs[i], ys[i], ws[i]) for i in range(flat_loss.num_batches)]
        # phi'' terms that are zero on the data (relu, linear) cost nothing in the products
        hidden = range(len(chain.kernels) - 1)
        zero = [not any(np.any(c["phi2"][l].numpy()) for c in self.batches) for l in hidden]
        for c in self.batches:
            c["phi2"] = [None if z else p for z, p in zip(zero, c["phi2"])]
        self.piecewise_linear = all(zero)
        # input features that are zero in every example (MNIST's border pixels: 135 of 784
        # over 5,000 images) add nothing to the first layer's products and get zero gradient
        # rows: the first layer works on the others only (16% faster first-layer matmuls)
        first = np.concatenate([c["inputs"][0].numpy() for c in self.batches])
        used = np.flatnonzero(np.any(first != 0, axis=0))
        self._columns = None
        if len(used) < 0.95 * first.shape[1]:
            self._columns = (tf.constant(used[:, None]), int(first.shape[1]))
            for c in self.batches:
                c["inputs"][0] = tf.gather(c["inputs"][0], used, axis=1)
        # the GGN splits at the model's outputs: here, only when no function follows the last
        # Dense layer (a softmax there would move the split to the logits)
        self.ggn_applies = not chain.activations[-1]
        self._theta_t = theta_t
        spec = tf.TensorSpec((None, flat_loss.num_params), self.dtype)
        kinds = ("hessian", "ggn", "fisher")
        self._block = {kind: tf.function(lambda vs, kind=kind: self._block_product(vs, kind),
                                         input_signature=[spec]) for kind in kinds}
        self._single = {kind: tf.function(lambda v, kind=kind: self._summed(v, kind))
                        for kind in kinds}
        # uncached (benchmarks time them); `ggn_diagonal` / `fisher_diagonal` keep the result
        self.diagonal_functions = {"ggn": tf.function(self._ggn_diagonal),
                                   "fisher": tf.function(self._fisher_diagonal)}
        self._diagonals: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------------------ setup

    def _params(self, theta):
        parts = self.flat.unflatten(theta)
        c = self.chain
        return [parts[k] for k in c.kernels], [None if b is None else parts[b] for b in c.biases]

    def _setup_batch(self, theta, xb, yb, wb):
        kernels, biases = self._params(theta)
        h = tf.reshape(tf.cast(xb, self.dtype), (tf.shape(xb)[0], -1))
        inputs, phi1, phi2 = [], [], []
        last = len(kernels) - 1
        for l, (w, b) in enumerate(zip(kernels, biases)):
            inputs.append(h)
            z = tf.matmul(h, w) + (0 if b is None else b)
            if l == last:
                break
            with tf.GradientTape() as outer:
                outer.watch(z)
                with tf.GradientTape() as inner:
                    inner.watch(z)
                    s = _apply(self.chain.activations[l], z)
                d1 = inner.gradient(s, z)
                d1 = tf.ones_like(z) if d1 is None else d1
            d2 = outer.gradient(d1, z)
            phi1.append(d1)
            phi2.append(d2)
            h = s
        head = self.chain.activations[last]
        with tf.GradientTape() as outer:
            outer.watch(z)
            with tf.GradientTape() as inner:
                inner.watch(z)
                loss = self.flat._loss_from_outputs(_apply(head, z), yb, wb)
            g = inner.gradient(loss, z)
        lam = outer.batch_jacobian(g, z)  # per example: the loss is a sum of per-example terms
        deltas = [None] * len(kernels)
        deltas[last] = g
        for l in range(last - 1, -1, -1):
            deltas[l] = tf.matmul(deltas[l + 1], kernels[l + 1], transpose_b=True) * phi1[l]
        # phi'' terms: (delta_{l+1} W^T) * phi''_l, kept only where phi'' is not zero
        curv = [tf.zeros_like(z) if d2 is None else
                tf.matmul(deltas[l + 1], kernels[l + 1], transpose_b=True) * d2
                for l, d2 in enumerate(phi2)]
        # 1 / w per example (0 for padding): the empirical Fisher's per-example gradients
        inverse_w = tf.math.divide_no_nan(tf.ones_like(wb), tf.cast(wb, self.dtype))
        return {"inputs": inputs, "phi1": phi1, "phi2": curv, "deltas": deltas, "lambda": lam,
                "inverse_w": inverse_w}

    # --------------------------------------------------------------------------- products

    def _rows_in(self, l: int, kernel):
        """A layer's kernel-shaped tensor as its (reduced) inputs need it."""
        if l or self._columns is None:
            return kernel
        return tf.gather_nd(kernel, self._columns[0])

    def _rows_out(self, l: int, rows):
        """A first-layer kernel gradient on the used inputs, back in the kernel's shape."""
        if l or self._columns is None:
            return rows
        index, width = self._columns
        return tf.scatter_nd(index, rows, (width, tf.shape(rows)[1]))

    def _forward(self, c: dict, kernels, vk, vb):
        """The forward tangents along v on one batch: (zdot per layer, adot per layer's
        input, None for the first)."""
        adots, zdots = [None], []
        for l in range(len(kernels)):
            zd = tf.matmul(c["inputs"][l], self._rows_in(l, vk[l]))
            if vb[l] is not None:
                zd = zd + vb[l]
            if l > 0:
                zd = zd + tf.matmul(adots[l], kernels[l])
            zdots.append(zd)
            if l < len(kernels) - 1:
                adots.append(c["phi1"][l] * zd)
        return zdots, adots

    def _batch_product(self, c: dict, kernels, vk, vb, kind: str):
        """H v ("hessian") or G v ("ggn") on one batch's cache, as per-layer (kernel, bias)
        parts."""
        hessian = kind == "hessian"
        zdots, adots = self._forward(c, kernels, vk, vb)
        dd = tf.linalg.matvec(c["lambda"], zdots[-1])
        parts = [None] * len(kernels)
        for l in range(len(kernels) - 1, -1, -1):
            gk = self._rows_out(l, tf.matmul(c["inputs"][l], dd, transpose_a=True))
            if l > 0 and hessian:
                gk = gk + tf.matmul(adots[l], c["deltas"][l], transpose_a=True)
            parts[l] = (gk, tf.reduce_sum(dd, 0))
            if l > 0:
                back = tf.matmul(dd, kernels[l], transpose_b=True)
                if hessian:
                    back = back + tf.matmul(c["deltas"][l], vk[l], transpose_b=True)
                dd = back * c["phi1"][l - 1]
                if hessian and c["phi2"][l - 1] is not None:
                    dd = dd + c["phi2"][l - 1] * zdots[l - 1]
        return parts

    def _batch_fisher(self, c: dict, kernels, vk, vb):
        """F v on one batch: F = sum_n w_n g_n g_n^T with g_n = J_n^T delta_L,n / w_n, so
        F v = sum_n s_n J_n^T delta_L,n with s_n = (delta_L,n . zdot_L,n) / w_n, and a
        per-example scale passes through the backward pass: a^T (s * delta_l) per layer."""
        zdots, _ = self._forward(c, kernels, vk, vb)
        scale = tf.reduce_sum(c["deltas"][-1] * zdots[-1], -1, keepdims=True) * \
            c["inverse_w"][:, None]
        return self._weighted_parts(c, [scale * d for d in c["deltas"]], squared=False)

    def _weighted_parts(self, c: dict, weighted, squared: bool):
        """Per layer (a^T m, sum_n m) for per-layer (N, out) tensors m, a the layer's input
        (squared: a*a, for diagonals)."""
        return [(self._rows_out(l, tf.matmul(a * a if squared else a, m, transpose_a=True)),
                 tf.reduce_sum(m, 0)) for l, (a, m) in enumerate(zip(c["inputs"], weighted))]

    def _over_batches(self, per_batch):
        """per_batch(cache) -> per-layer parts, summed over the batches, flat."""
        total = None
        for c in self.batches:
            parts = per_batch(c)
            total = parts if total is None else [(a + p, b + q) for (a, b), (p, q) in
                                                 zip(total, parts)]
        return self._flat(total)

    def _summed(self, v, kind: str):
        kernels, _ = self._params(self._theta_t)
        vk, vb = self._params(v)
        if kind == "fisher":
            return self._over_batches(lambda c: self._batch_fisher(c, kernels, vk, vb))
        return self._over_batches(lambda c: self._batch_product(c, kernels, vk, vb, kind))

    def _flat(self, parts):
        pieces = [None] * len(self.flat.sizes)
        for (gk, gb), k, b in zip(parts, self.chain.kernels, self.chain.biases):
            pieces[k] = tf.reshape(gk, [-1])
            if b is not None:
                pieces[b] = gb
        return tf.concat(pieces, 0)

    def _block_product(self, vs, kind: str):
        # one product per column: at a matmul's full speed already, a product vectorised
        # over the block (tf.vectorized_map) cost more per column (139 against 111-134 ms on
        # the MNIST MLP, 2026-12-06)
        return tf.map_fn(lambda v: self._summed(v, kind), vs)

    def product(self, v: np.ndarray, kind: str = "hessian") -> np.ndarray:
        """H v, G v or F v (kind "hessian", "ggn", "fisher") at this theta, numpy in and
        out."""
        return self._single[kind](np.asarray(v, self.flat.np_dtype)).numpy()

    def block_product(self, vs: np.ndarray, kind: str = "hessian") -> np.ndarray:
        """H V, G V or F V for V of shape (n, b), numpy in and out."""
        vs = tf.convert_to_tensor(np.asarray(vs, self.flat.np_dtype).T)
        return self._block[kind](vs).numpy().T

    # -------------------------------------------------------------------------- diagonals

    def ggn_diagonal(self) -> np.ndarray:
        """The exact diagonal of the generalised Gauss-Newton matrix (flat order)."""
        return self._diagonal("ggn")

    def fisher_diagonal(self) -> np.ndarray:
        """The exact diagonal of the empirical Fisher, sum_n w_n g_n^2: a Dense layer's
        per-example gradient is the outer product of its input and delta_n / w_n, so its
        squares are (a^2)^T (delta^2 / w), one matmul per layer."""
        return self._diagonal("fisher")

    def _diagonal(self, kind: str) -> np.ndarray:
        if kind not in self._diagonals:
            self._diagonals[kind] = self.diagonal_functions[kind]().numpy()
        return self._diagonals[kind]

    def exact_hessian_diagonal(self) -> np.ndarray:
        """The Hessian's exact diagonal: the GGN's, when every hidden activation is piecewise
        linear on the data (raises ValueError otherwise)."""
        if not self.piecewise_linear:
            raise ValueError("the Hessian diagonal equals the GGN's only for piecewise-linear "
                             "activations (phi'' = 0 on the data)")
        return self.ggn_diagonal()

    def _ggn_diagonal(self):
        kernels, _ = self._params(self._theta_t)

        def per_batch(c):
            lam, vectors = tf.linalg.eigh(c["lambda"])  # (N, C), (N, C, C): columns u_k
            d = tf.transpose(vectors, (2, 0, 1))  # (C, N, C): d[k] = u_k per example
            weighted = [None] * len(kernels)  # per layer: sum_k lambda_k delta_k^2
            for l in range(len(kernels) - 1, -1, -1):
                weighted[l] = tf.einsum("knj,nk->nj", d * d, lam)
                if l > 0:
                    d = tf.einsum("knj,ij->kni", d, kernels[l]) * c["phi1"][l - 1][None]
            return self._weighted_parts(c, weighted, squared=True)

        return self._over_batches(per_batch)

    def _fisher_diagonal(self):
        return self._over_batches(lambda c: self._weighted_parts(
            c, [d * d * c["inverse_w"][:, None] for d in c["deltas"]], squared=True))
