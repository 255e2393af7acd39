"""Fully-connected nets from scratch (the HW7 report): layers with hand-written backward passes,
centered-difference gradient checks, update rules matching `keras.optimizers`, and a Solver that
trains through an XLA-compiled `tf.function`.

  layers     Linear, ReLU, LinearReLU, Dropout, BatchNorm, SoftmaxLoss, SVMLoss
  gradcheck  numeric_gradient, numeric_gradient_array, rel_error, check_layer
  nets       TwoLayerNet, FullyConnectedNet
  optim      SGD, Momentum (Nesterov), RMSProp, Adagrad, Adam; get(name)
  solver     Solver, load_checkpoint
"""

from hw1_tf.scratch.layers import (BatchNorm, Dropout, Linear, LinearReLU, ReLU, SoftmaxLoss,
                                   SVMLoss, softmax_loss, svm_loss)
from hw1_tf.scratch.nets import FullyConnectedNet, TwoLayerNet
from hw1_tf.scratch.solver import Solver, load_checkpoint

__all__ = ["BatchNorm", "Dropout", "Linear", "LinearReLU", "ReLU", "SoftmaxLoss", "SVMLoss",
           "softmax_loss", "svm_loss", "FullyConnectedNet", "TwoLayerNet", "Solver",
           "load_checkpoint"]
