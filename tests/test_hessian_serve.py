"""The serve route of the curvature toolkit: the loss of any SavedModel through its own `serve`,
its trainable variables as the parameters. SavedModels are exported here by plain Keras
(`model.export`, no .keras beside it) and by a plain `tf.Module`; the Hessians are checked
against central differences of the gradient, the Keras route's exact Hessian and a hand-written
loss. Tiny models (8x8 inputs), float64 where finite differences need it."""

import contextlib
import io
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from hw1_tf import cli, framework, hessian, store

ROOT = Path(__file__).resolve().parents[1]


def _images(n=24, classes=4, seed=0, dtype=np.float64):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8, 8, 1).astype(dtype), rng.randint(0, classes, n).astype(np.int32)


def _fd_hessian(flat, h=1e-5):
    """Central differences of the gradient, column by column."""
    return np.column_stack([(flat.gradient(flat.theta0 + h * e) -
                             flat.gradient(flat.theta0 - h * e)) / (2 * h)
                            for e in np.eye(flat.num_params)])


class SoftmaxModule(tf.Module):
    """A plain tf.Module: flatten, tanh layer, softmax (probabilities out); one non-trainable
    input scale."""

    def __init__(self, hidden=5, classes=4, dtype=tf.float64):
        rng = np.random.RandomState(3)
        self.w1 = tf.Variable(rng.randn(64, hidden) * 0.3, dtype=dtype)
        self.b1 = tf.Variable(rng.randn(hidden) * 0.1, dtype=dtype)
        self.w2 = tf.Variable(rng.randn(hidden, classes) * 0.5, dtype=dtype)
        self.scale = tf.Variable(0.5, dtype=dtype, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float64)])
    def serve(self, x):
        h = tf.tanh(tf.reshape(x, (-1, 64)) * self.scale @ self.w1 + self.b1)
        return tf.nn.softmax(h @ self.w2)


@pytest.fixture(scope="module")
def module_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("module") / "softmax_module"
    module = SoftmaxModule()
    tf.saved_model.save(module, str(path))
    return path, module


def _bn_cnn(seed=0, dtype="float64"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1), dtype=dtype),
        keras.layers.Conv2D(2, 3, activation="tanh", dtype=dtype),
        keras.layers.BatchNormalization(dtype=dtype),
        keras.layers.MaxPooling2D(2, dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(10, dtype=dtype)])


@pytest.fixture(scope="module")
def bn_cnn(tmp_path_factory):
    """A Keras CNN with BatchNorm whose moving statistics are not the initial ones (a few
    training-mode calls update them), exported by plain model.export: no .keras beside it."""
    x, y = _images()
    model = _bn_cnn()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path_factory.mktemp("cnn") / "bn_cnn"
    model.export(str(path), verbose=0)
    assert not path.with_suffix(".keras").exists()
    return path, model, x, y


def test_tf_module_probabilities_detected_and_hessian_equals_finite_differences(module_model):
    path, module = module_model
    x, y = _images()
    flat = hessian.FlatLoss.from_saved_model(path, x, y)
    assert flat.route == "serve" and flat.outputs_kind == "probabilities"
    assert "probabilities" in flat.loss_name and any("1 non-trainable" in n for n in flat.notes)
    assert flat.num_params == 64 * 5 + 5 + 5 * 4  # the trainable ones only
    # the loss by hand: mean -log p_y of the module's own output
    probs = module.serve(tf.constant(x)).numpy()
    assert flat.loss() == pytest.approx(-np.mean(np.log(probs[np.arange(len(y)), y])), rel=1e-12)
    full = flat.full_hessian()
    columns = np.column_stack([flat.hvp(e) for e in np.eye(flat.num_params)])
    np.testing.assert_allclose(columns, columns.T, atol=1e-12)  # symmetric before symmetrising
    np.testing.assert_allclose(full, _fd_hessian(flat), atol=1e-7)
    v = np.random.RandomState(1).randn(flat.num_params)
    np.testing.assert_allclose(flat.hvp(v), full @ v, atol=1e-12)
    vs = np.random.RandomState(2).randn(flat.num_params, 3)
    np.testing.assert_allclose(flat.hvp_block(vs), full @ vs, atol=1e-12)
    top, _ = hessian.top_eigenvalues(flat.operator(), 3, tol=1e-10)
    np.testing.assert_allclose(top, np.linalg.eigvalsh(full)[::-1][:3], rtol=1e-8)
    # overriding the detection changes the loss: softmax of the probabilities, as logits
    as_logits = hessian.FlatLoss.from_saved_model(path, x, y, outputs="logits")
    assert as_logits.outputs_kind == "logits"
    want = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, probs))
    assert as_logits.loss() == pytest.approx(float(want), rel=1e-12)


def test_batchnorm_cnn_export_serve_route_equals_keras_inference_hessian(bn_cnn):
    path, model, x, y = bn_cnn
    flat = hessian.FlatLoss.from_saved_model(path, x, y, batch_size=10)
    assert flat.outputs_kind == "logits" and flat.num_batches == 3
    assert any("2 non-trainable" in n and "BatchNorm" in n for n in flat.notes)
    # independent: the Keras model itself in inference mode (moving statistics), nested tapes
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    keras_flat = hessian.FlatLoss(model, x, y, batch_size=24, hvp_mode="forward_over_reverse",
                                  jit_compile=False)
    np.testing.assert_array_equal(flat.theta0, keras_flat.theta0)
    assert flat.loss() == pytest.approx(keras_flat.loss(), rel=1e-12)
    np.testing.assert_allclose(flat.gradient(), keras_flat.gradient(), atol=1e-13)
    full = flat.full_hessian()
    np.testing.assert_allclose(full, keras_flat.full_hessian(), atol=1e-11)
    np.testing.assert_allclose(full, _fd_hessian(flat), atol=1e-6)
    # GGN and Fisher through serve (double VJPs) equal the Keras model's (forward-mode JVPs)
    for kind in ("ggn", "fisher"):
        a, b = (hessian.curvature_operator(f, kind) for f in (flat, keras_flat))
        assert (a.mode, b.mode) == ("reverse", "forward")
        units = np.eye(flat.num_params)
        np.testing.assert_allclose(a.matmat(units), b.matmat(units), atol=1e-12)
    blocks = flat.block_diagonal_hessian()
    assert set(blocks.routes) == {"hvp columns"}
    offsets = np.concatenate([[0], np.cumsum(flat.sizes)])
    for i, block in enumerate(blocks.blocks):
        np.testing.assert_allclose(block, full[offsets[i]:offsets[i + 1],
                                               offsets[i]:offsets[i + 1]], atol=1e-12)
    # the BatchNorm statistics were held fixed: the ones serve read are still the trained
    # model's moving mean and variance (not the initial 0 and 1), after every product above
    served_stats = [v.numpy() for v in flat.loaded.non_trainable_variables]
    assert len(served_stats) == len(moving) == 2
    for got, want in zip(served_stats, moving):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(moving[0], 0.0) and not np.allclose(moving[1], 1.0)


def test_serve_and_keras_routes_agree_on_loss_gradient_and_top_eigenvalues(tmp_path):
    x, y = _images(n=30, dtype=np.float32)
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(4)])
    path = store.export_model(model, tmp_path / "net")  # SavedModel + net.keras
    serve = hessian.FlatLoss.from_saved_model(path, x, y)
    keras_route = hessian.FlatLoss.from_saved_model(path, x, y, route="keras")
    assert (serve.route, keras_route.route) == ("serve", "keras")
    assert serve.outputs_kind == keras_route.outputs_kind == "logits"
    assert serve.loss() == pytest.approx(keras_route.loss(), rel=1e-6)
    np.testing.assert_allclose(serve.gradient(), keras_route.gradient(), rtol=1e-4, atol=1e-7)
    a, _ = hessian.top_eigenvalues(serve.operator(), 3, tol=1e-8)
    b, _ = hessian.top_eigenvalues(keras_route.operator(), 3, tol=1e-8)
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_bad_input_names_the_problem(module_model, tmp_path):
    path, _ = module_model
    x, y = _images()
    with pytest.raises(hessian.Hw1Error, match=r"serve takes inputs of shape \(None, 8, 8, 1\), "
                                               r"the examples have shape \(None, 10\)"):
        hessian.FlatLoss.from_saved_model(path, np.zeros((24, 10)), y)
    with pytest.raises(hessian.Hw1Error, match="labels run from 0 to 7 but serve returns 4 "
                                               "outputs"):
        hessian.FlatLoss.from_saved_model(path, x, np.arange(24) % 8)
    with pytest.raises(hessian.Hw1Error, match="no SavedModel here"):
        hessian.FlatLoss.from_saved_model(tmp_path / "nothing", x, y)
    # a layout that differs only in shape is reshaped, and said so
    flat = hessian.FlatLoss.from_saved_model(path, x.reshape(24, 64), y)
    assert "inputs reshaped from (64,) to (8, 8, 1)" in flat.notes


def _invoke(*flags):
    """`bin/run_hessian_spectrum flags` in this process (hw1_tf.cli.invoke: the binary's flags,
    work and one-line errors; tests/test_cli and test_bad_input start real binaries): its exit
    code and its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.invoke_experiment("hessian_spectrum", [*flags, "--verbose=0"])
    return code, err.getvalue()


def test_binary_bad_saved_model_is_one_error_line(tmp_path):
    # serve takes 8x8x1 float64 images; mnist's are 28x28
    path = tmp_path / "module"
    tf.saved_model.save(SoftmaxModule(classes=10), str(path))
    code, stderr = _invoke(f"--saved_model={path}", "--dataset=mnist", "--num_examples=20",
                           f"--output_dir={tmp_path}")
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, stderr[-1500:]
    assert "serve takes inputs of shape (None, 8, 8, 1)" in lines[0]
    assert "Traceback" not in stderr
    # labels beyond the outputs: digits has 10 classes, this module 4
    small = tmp_path / "small"
    tf.saved_model.save(SoftmaxModule(classes=4), str(small))
    code, stderr = _invoke(f"--saved_model={small}", "--dataset=digits", "--num_examples=40",
                           f"--output_dir={tmp_path}")
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "but serve returns 4 outputs" in lines[0], \
        stderr[-1500:]
    assert not (tmp_path / "results" / "hessian_spectrum").exists()


def test_hessian_spectrum_end_to_end_on_a_foreign_batchnorm_cnn(bn_cnn, tmp_path):
    from hw1_tf.experiments import hessian_spectrum

    path, *_ = bn_cnn
    config = hessian_spectrum.Config(saved_model=str(path), dataset="digits", num_examples=60,
                                     top_k=3, probes=12, lanczos_steps=15, slq_probes=2,
                                     perturbation_samples=16, subsample_min=15,
                                     subsample_seeds=2, verbose=0, output_dir=str(tmp_path))
    results = framework.run(hessian_spectrum, config)
    run = results["runs"]["bn_cnn"]
    assert "skipped" not in run  # GGN, Fisher and the subsample study run through serve too
    assert run["route"] == "serve" and run["outputs"] == "logits"
    assert "logits" in run["loss_used"] and any("BatchNorm" in n for n in run["notes"])
    exact = np.asarray(run["eigenvalues"])
    assert run["num_params"] == len(exact) == 3 * 3 * 2 + 2 + 2 + 2 + 18 * 10 + 10
    np.testing.assert_allclose(run["top_eigenvalues"], exact[::-1][:3], rtol=1e-3)
    assert abs(run["trace"] - exact.sum()) <= 4 * run["trace_standard_error"]
    assert run["hvp_choice"] == ["double_backprop", False] and run["hvp_choice_from"] == "rule"
    for kind in ("ggn", "fisher"):  # positive semi-definite: a positive top and trace
        op = run["operators"][kind]
        assert op["top"]["eigenvalues"][0] > 0 and op["trace"]["trace"] > 0
        assert np.max(op["top"]["residuals"]) < 1e-3 * op["top"]["eigenvalues"][0]
    assert len(run["operators"]["principal_angles"]["hessian-ggn"]) == 3
    study = run["subsample"]
    assert study["sizes"] == [15, 30, 60] and np.asarray(study["lambda_max"]).shape == (2, 2)
    assert np.all(np.isfinite(study["lambda_max"])) and study["enough_examples"] in (15, 30, 60)
    figures = {p.name for p in (tmp_path / "figures" / "hessian_spectrum").glob("*.png")}
    assert {"operators_bn_cnn.png", "subsample_bn_cnn.png"} <= figures, figures

    class Figures:
        def figure(self, key, caption):
            return ""

    section = hessian_spectrum.report_section(results, Figures())
    assert "(serve route; 2 non-trainable variables (e.g. BatchNorm" in section
    assert "Not computed" not in section and "Gauss-Newton G, top" in section
    assert "Subsample study: how many examples are enough?" in section


def test_docs_example_runs_and_its_numbers_are_the_exact_hessians(tmp_path, monkeypatch,
                                                                  capsys):
    """The runnable example of docs/curvature.md, as written: it runs, prints the line the page
    shows, and its top eigenvalues and trace agree with the exact Hessian's."""
    import re

    text = (ROOT / "docs" / "curvature.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "from_saved_model" in b)
    shown = re.search(r"```python\n.*?```\n\nprints.*?```\n(.*?)\n```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "docs/curvature.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == shown
    flat = namespace["flat"]
    exact = np.linalg.eigvalsh(flat.full_hessian())
    np.testing.assert_allclose(namespace["top"], exact[::-1][:3], rtol=1e-3)
    trace = namespace["trace"]
    assert abs(trace.trace - exact.sum()) <= 4 * trace.standard_error
    grid, density = namespace["grid"], namespace["density"]
    assert abs(np.sum(density) * (grid[1] - grid[0]) - 1) < 1e-2  # a density: integrates to 1


def test_subsample_study_serve_route_equals_keras_route(tmp_path):
    """The subsample study through serve (subset losses built by ServeFlatLoss.subset) gives the
    Keras route's values, same seeds, to float32 tolerance; a product that left other weights in
    the served variables beforehand does not leak into the subsets."""
    from hw1_tf.experiments import hessian_spectrum

    x, y = _images(n=40, dtype=np.float32)
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(4)])
    path = store.export_model(model, tmp_path / "net")  # SavedModel + net.keras
    serve = hessian.FlatLoss.from_saved_model(path, x, y, batch_size=16)
    keras_route = hessian.FlatLoss.from_saved_model(path, x, y, route="keras", batch_size=16)
    serve.loss(serve.theta0 + 0.1)  # leaves theta0 + 0.1 in the served variables
    config = hessian_spectrum.Config(subsample_seeds=2, subsample_min=10, probes=6,
                                     eigen_tolerance=1e-8, seed=3)
    top = hessian.eigenpairs(keras_route.operator(), 1, tol=1e-8, seed=3)
    trace = hessian.hutchinson_trace(keras_route.operator(), 6, seed=3)
    reference = {"top_eigenvalues": top.values, "trace": trace.trace,
                 "trace_interval": trace.interval(0.9)}
    a = hessian_spectrum.subsample_study(serve, config, reference)
    b = hessian_spectrum.subsample_study(keras_route, config, reference)
    assert a["sizes"] == b["sizes"] == [10, 20, 40]
    for key in ("lambda_max", "trace", "trace_half_width"):
        assert np.asarray(a[key]).shape == (2, 2)
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-7)
    assert len(np.unique(np.round(a["lambda_max"], 6))) == 4  # four different subsets
    assert a["enough_examples"] == b["enough_examples"] and a["answer"] == b["answer"]
    # independent: a subset's loss is the Keras model's mean cross-entropy on those examples
    idx = np.random.RandomState([3, 10, 1]).choice(40, 10, replace=False)
    sub = serve.subset(idx)
    assert sub.route == "serve" and sub.num_examples == 10
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[idx], model(x[idx]))
    assert sub.loss() == pytest.approx(float(want), rel=1e-6)


def test_serve_route_batched_loss_and_perturbation_ratio_equal_the_loop(module_model):
    """batched_loss through serve runs the samples in one graph (assign, evaluate, in turn);
    it equals one loss() call per sample, and so does the sampled minimal ratio."""
    path, module = module_model
    x, y = _images(n=50)
    flat = hessian.FlatLoss.from_saved_model(path, x, y, batch_size=20)
    thetas = flat.theta0 + hessian.sphere_samples(flat.num_params, 37, 0.05, seed=1)
    loop = np.array([flat.loss(t) for t in thetas])
    np.testing.assert_allclose(flat.batched_loss(thetas), loop, rtol=1e-14)
    assert len(np.unique(loop)) == 37
    # back at theta0 after the samples: the module's own output (independent of FlatLoss)
    probs = module.serve(tf.constant(x)).numpy()
    assert flat.loss() == pytest.approx(-np.mean(np.log(probs[np.arange(50), y])), rel=1e-12)
    looped = hessian.perturbation_ratio(lambda ts: np.array([flat.loss(t) for t in ts]),
                                        flat.theta0, 0.05, samples=40, seed=2, chunk=16)
    vectorised = hessian.perturbation_ratio(flat.batched_loss, flat.theta0, 0.05, samples=40,
                                            seed=2, chunk=16)
    assert vectorised == looped and 0 < looped < 1
    assert flat._function("batched_losses").experimental_get_tracing_count() == 1
