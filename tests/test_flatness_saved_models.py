"""flatness --saved_models=A,B: the line between any two SavedModels a user brings (Keras CNNs
with BatchNorm, plain dense Keras exports, a tf.Module), exported here by plain `model.export` /
`tf.saved_model.save` on sklearn digits (seconds each). The serve path is checked against each
model's own Keras predictions and a Keras model carrying the interpolated weights, the dense path
against the serve path, and bad input against one error line and its exit code."""

import contextlib
import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import cli, data, framework, landscape
from hw1_tf.experiments import flatness

ALPHAS = dict(alpha_min=-0.5, alpha_max=1.5, num_alphas=5)  # -0.5, 0, 0.5, 1, 1.5


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _cnn():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten(), keras.layers.Dense(10)])


def _dense(batch_norm: bool):
    middle = ([keras.layers.Dense(16), keras.layers.BatchNormalization(), keras.layers.ReLU()]
              if batch_norm else [keras.layers.Dense(16, activation="relu")])
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), *middle,
                             keras.layers.Dense(10)])


def _fit_and_export(build, seed, digits, path, variance_scale=1.0):
    """`build()` trained a little (BatchNorm statistics move off 0 and 1), its moving variances
    times `variance_scale`, exported with plain `model.export`: the Keras model, the path."""
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:400], digits.y_train[:400], epochs=2, batch_size=32, verbose=0)
    for w in model.weights:
        if w.path.endswith("moving_variance"):
            w.assign(w.numpy() * variance_scale)
    model.export(str(path), verbose=0)
    return model, str(path)


def _between(model_a, model_b, alpha):
    """Keras' own weights of θ(α): moving variances geometric (positive at every α), every
    other weight linear."""
    out = []
    for w, a, b in zip(model_a.weights, model_a.get_weights(), model_b.get_weights()):
        if w.path.endswith("moving_variance"):
            out.append(np.exp((1 - alpha) * np.log(a) + alpha * np.log(b)))
        else:
            out.append((1 - alpha) * a + alpha * b)
    return out


def _ce_of_logits(logits, y):
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean(), (log_p.argmax(1) == y).mean()


def _run(tmp_path, paths, **kw):
    config = flatness.Config(dataset="digits", saved_models=tuple(paths), verbose=0,
                             jit_compile=False, output_dir=str(tmp_path / "out"),
                             **{**ALPHAS, **kw})
    return framework.run(flatness, config)


@pytest.fixture(scope="module")
def cnns(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("cnn")
    # B's variances 20x A's: linearly extrapolated to α = -0.5 they would be negative
    pair = [_fit_and_export(_cnn, seed, digits, tmp / f"cnn_{seed}", scale)
            for seed, scale in ((1, 1.0), (2, 20.0))]
    return tmp, pair, _run(tmp, [p for _, p in pair])


def test_cnn_pair_takes_the_serve_path_and_matches_the_keras_models(cnns, digits):
    _, ((model_a, _), (model_b, _)), results = cnns
    (line,) = results["lines"].values()
    assert line["path"] == "serve" and line["outputs"] == "logits"
    assert "conv2d" in line["why_not_dense"]
    assert "moving variances geometrically" in line["batch_norm"]
    assert "2 non-trainable" in line["batch_norm"] and "cannot be recomputed" in line["batch_norm"]
    alphas = np.asarray(line["alphas"])
    for split, x, y in (("train", digits.x_train, digits.y_train),
                        ("test", digits.x_test, digits.y_test)):
        # the endpoints: each model's own Keras predictions (an independent computation)
        for alpha, model, label in ((0.0, model_a, "cnn_1"), (1.0, model_b, "cnn_2")):
            loss, acc = _ce_of_logits(model.predict(x, verbose=0), y)
            i = int(np.flatnonzero(alphas == alpha)[0])
            np.testing.assert_allclose(line[f"{split}_loss"][i], loss, rtol=1e-5)
            np.testing.assert_allclose(line[f"{split}_accuracy"][i], acc, atol=1e-6)
            np.testing.assert_allclose(results["runs"][label]["own"][f"{split}_loss"], loss,
                                       rtol=1e-5)
        # interior and outside points: a fresh Keras CNN carrying θ(α) (BatchNorm moving
        # statistics interpolated as the results say)
        for i in (0, 2, 4):
            alpha = alphas[i]
            between = _cnn()
            between.set_weights(_between(model_a, model_b, alpha))
            loss, acc = _ce_of_logits(between.predict(x, verbose=0), y)
            np.testing.assert_allclose(line[f"{split}_loss"][i], loss, rtol=1e-5)
            np.testing.assert_allclose(line[f"{split}_accuracy"][i], acc, atol=1e-6)
    # not a flat line, and finite where linear variances would have been negative
    assert len(set(np.round(line["train_loss"], 5))) == len(alphas)
    assert np.isfinite(line["train_loss"]).all() and np.isfinite(line["test_loss"]).all()
    linear = _cnn()  # what linear variances would have given there
    linear.set_weights([1.5 * a - 0.5 * b for a, b in zip(model_a.get_weights(),
                                                           model_b.get_weights())])
    assert np.isnan(_ce_of_logits(linear.predict(digits.x_test, verbose=0), digits.y_test)[0])


def test_cnn_results_report_and_figure_name_the_path(cnns):
    from hw1_tf import markdown, store
    from hw1_tf.records import typed_runs

    tmp, _, results = cnns
    paths = store.Paths.create(tmp / "out")
    assert (paths.figures_dir("flatness") / "cnn_1__cnn_2.png").is_file()
    section = flatness.report_section(typed_runs(store.load_results(paths, "flatness")),
                                      markdown.Context(paths, "flatness"))
    assert "serve path" in section and "moving variances geometrically" in section
    assert "cnn_1" in section and "cnn_2" in section
    card = flatness.scorecard(typed_runs(results))["flatness.test_loss"]
    assert "serve path" in card.note and "cnn_1" in card.ours


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
def test_dense_pair_takes_the_dense_path_which_agrees_with_the_serve_path(tmp_path, digits,
                                                                          batch_norm):
    pair = [_fit_and_export(lambda: _dense(batch_norm), seed, digits, tmp_path / f"d{seed}")
            for seed in (3, 4)]
    results = _run(tmp_path, [p for _, p in pair], recompute_batch_norm=False)
    (line,) = results["lines"].values()
    assert line["path"] == "dense" and line["why_not_dense"] is None
    assert line["batch_norm"] == (landscape.BATCH_NORM_INTERPOLATED if batch_norm
                                  else "none (no BatchNorm layers)")
    first, second = (landscape.load_endpoint(p, dense_only=False) for _, p in pair)
    split = {"train": (digits.x_train, digits.y_train), "test": (digits.x_test, digits.y_test)}
    served = landscape.evaluate_line_serve(first, second, line["alphas"], split)
    for name in split:
        np.testing.assert_allclose(line[f"{name}_loss"], served[name]["loss"], rtol=2e-5)
        np.testing.assert_allclose(line[f"{name}_accuracy"], served[name]["accuracy"],
                                   atol=2 / len(split[name][1]))  # a near-tie may flip
    if batch_norm:  # by default the dense path recomputes the statistics, and says so
        recomputed = _run(tmp_path / "again", [p for _, p in pair], batch_norm_examples=500)
        (again,) = recomputed["lines"].values()
        assert again["batch_norm"] == "recomputed on 500 training examples at each α"
        assert again["recomputed_batch_norm"] is True


class _Softmax(tf.Module):
    """A plain tf.Module serving probabilities: softmax(scale · (x W + b)), `scale` a
    non-trainable variable."""

    def __init__(self, seed, inputs=64, outputs=10):
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(0, 0.1, (inputs, outputs)).astype(np.float32))
        self.b = tf.Variable(rng.normal(0, 0.1, outputs).astype(np.float32))
        self.scale = tf.Variable(np.float32(rng.uniform(0.5, 2.0)), trainable=False)
        side = int(round(np.sqrt(inputs)))
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, side, side, 1], tf.float32)])

    def _serve(self, x):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.nn.softmax(self.scale * (flat @ self.w + self.b))

    def arrays(self):
        return [self.w.numpy(), self.b.numpy(), self.scale.numpy()]


def _save_module(module, path):
    tf.saved_model.save(module, str(path))
    return str(path)


def test_tf_module_pair_serve_path_with_probabilities(tmp_path, digits):
    modules = [_Softmax(5), _Softmax(6)]
    paths = [_save_module(m, tmp_path / f"module_{i}") for i, m in enumerate(modules)]
    results = _run(tmp_path, paths)
    (line,) = results["lines"].values()
    assert line["path"] == "serve" and line["outputs"] == "probabilities"
    assert "1 non-trainable float variables interpolated" in line["batch_norm"]
    (wa, ba, sa), (wb, bb, sb) = (m.arrays() for m in modules)
    for i, alpha in enumerate(line["alphas"]):
        w, b, s = ((1 - alpha) * p + alpha * q for p, q in ((wa, wb), (ba, bb), (sa, sb)))
        for split, x, y in (("train", digits.x_train, digits.y_train),
                            ("test", digits.x_test, digits.y_test)):
            logits = s * (x.reshape(len(x), -1).astype(np.float64) @ w + b)
            loss, acc = _ce_of_logits(logits, y)
            np.testing.assert_allclose(line[f"{split}_loss"][i], loss, rtol=1e-5)
            np.testing.assert_allclose(line[f"{split}_accuracy"][i], acc, atol=1e-6)


# ------------------------------------------------------------------------------ bad input


def _invoke(args, tmp_path) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.invoke_experiment("flatness", [*args, "--dataset=digits", "--verbose=0",
                                                  f"--output_dir={tmp_path / 'out'}"])
    assert "Traceback" not in err.getvalue(), err.getvalue()[-3000:]
    return code, [line for line in err.getvalue().splitlines()
                  if line.startswith(("error:", "usage error:"))]


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, cnns):
    _, ((_, cnn), _), _ = cnns
    dense = _save_module(_Softmax(7), tmp_path / "dense")
    mnist_sized = _save_module(_Softmax(8, inputs=784), tmp_path / "mnist_sized")
    five = _save_module(_Softmax(9, outputs=5), tmp_path / "five")
    five_too = _save_module(_Softmax(10, outputs=5), tmp_path / "five_too")
    cases = [([f"--saved_models={cnn},{dense}"], 1, "interpolation needs one architecture"),
             ([f"--saved_models={dense},{five}"], 1, "interpolation needs one architecture"),
             ([f"--saved_models={mnist_sized},{mnist_sized}"], 1, "serve takes inputs of shape"),
             ([f"--saved_models={five},{five_too}"], 1, "labels run from 0 to 9 but serve "
                                                        "returns 5 outputs"),
             ([f"--saved_models={dense},{tmp_path / 'nothing'}"], 1, "no SavedModel here"),
             ([f"--saved_models={dense}"], 2, "--saved_models takes two paths"),
             ([f"--saved_models={cnn},{cnn}", "--outputs=nope"], 2, "--outputs")]
    for args, exit_code, text in cases:
        code, lines = _invoke(args, tmp_path)
        assert code == exit_code and len(lines) == 1 and text in lines[0], (args, code, lines)
    assert not (tmp_path / "out" / "results" / "flatness" / "results.json").exists()
