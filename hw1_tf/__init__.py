"""hw1_tf: the HW1 deep-learning study (deep vs shallow, optimization, generalization) in TF/Keras."""

__version__ = "0.1.0"
