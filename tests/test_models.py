"""Model builders and the equal-parameter width solver against Keras' own parameter count."""

import pytest

from hw1_tf import models


@pytest.mark.parametrize("depth", [1, 2, 4, 7])
def test_dense_widths_hit_target_within_one_percent(depth):
    hidden = models.solve_dense_widths(depth, 571, 1, 1)
    assert len(hidden) == depth
    built = models.build(models.ModelSpec("m", hidden=hidden), (1,), 1)
    assert built.count_params() == models.param_count(1, hidden, 1)
    assert abs(built.count_params() - 571) <= 0.01 * 571


@pytest.mark.parametrize("family", models.FAMILIES)
def test_families_are_comparable_in_size(family):
    spec = models.family_spec(family, 20000, (28, 28, 1), 10)
    n = models.build(spec, (28, 28, 1), 10).count_params()
    assert abs(n - 20000) <= 0.1 * 20000, (spec, n)


def test_cnn_on_vector_input_is_a_clear_error():
    from hw1_tf.errors import Hw1Error

    with pytest.raises(Hw1Error, match="image input"):
        models.build(models.ModelSpec("c", "cnn", filters=(4,)), (10,), 2)


@pytest.mark.parametrize("shape, pools, side", [((28, 28, 1), 3, 3), ((8, 8, 1), 2, 2),
                                               ((32, 32, 3), 4, 2)])
def test_deep_cnn_pools_after_every_conv_but_never_below_two_by_two(shape, pools, side):
    import keras

    spec = models.family_spec("cnn_deep", 50000, shape, 10)
    built = models.build(spec, shape, 10)
    kinds = [type(layer).__name__ for layer in built.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("MaxPooling2D") == pools
    assert kinds[:2] == ["Conv2D", "MaxPooling2D"]  # the first pool right after the first conv
    flat = next(layer for layer in built.layers if isinstance(layer, keras.layers.Flatten))
    assert flat.input.shape[1:3] == (side, side)
    assert abs(built.count_params() - 50000) <= 0.05 * 50000
