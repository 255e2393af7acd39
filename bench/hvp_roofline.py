"""How close one Hessian-vector product is to the fastest it can be on this CPU, one thread each.

The MNIST 784-256-256-256-10 MLP of bench/hessian.py (one epoch of Adam, 5,000 examples). An
exact product needs, per Dense layer, the matmuls of `hw1_tf.linearised`'s R-op: forward
a V (+ adot W), gradient a^T deltadot (+ adot^T delta), backward deltadot W^T + delta V^T;
no exact method needs fewer (PyHessian's second backward through its kept graph runs the same
shapes). The floor: those matmuls alone, in one TensorFlow graph, on this core; and the same
with the first layer on the input features that are not zero in every example (MNIST's border
pixels), which hw1_tf drops. Timed in CPU
seconds (process time), min of rounds, every variant interleaved, one intra-op thread for
TensorFlow and torch, so another process on the machine costs each the same (`--threads=2`:
wall seconds with two threads each, for an idle machine).

Prints milliseconds per product for: the matmul floor, hw1_tf's linearised product (the rule's
choice), its double backprop, and PyHessian 0.1's product; then each as a multiple of the floor
and PyHessian / hw1_tf. The ceiling of any exact product's lead over PyHessian here is
PyHessian / floor.

    .venv/bin/python bench/hvp_roofline.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="products per timing")
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of TensorFlow and torch (one: load-robust)")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    import hessian as bench  # bench/hessian.py: the same model, weights and examples
    from pyhessian import hessian as PyHessian

    from hw1_tf import hessian

    x, y = bench.mnist(args.examples)
    model = bench.keras_mlp((256, 256, 256), x, y, 1)
    flat = hessian.FlatLoss(model, x, y, batch_size=args.examples)
    double = hessian.FlatLoss(model, x, y, batch_size=args.examples,
                              hvp_mode="double_backprop", jit_compile=False)
    tmodel = bench.torch_copy(model)
    ph = PyHessian(tmodel, torch.nn.CrossEntropyLoss(),
                   data=(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))), cuda=False)
    params = [p for p in tmodel.parameters() if p.requires_grad]
    v = np.random.RandomState(0).standard_normal(flat.num_params).astype(np.float32)
    v_torch = bench.flat_to_torch(v, params)

    # the floor: the exact product's matmuls, nothing else
    rng = np.random.RandomState(1)
    n = args.examples
    dims = [(k.shape[0], k.shape[1]) for k in (w for w in model.trainable_variables
                                               if len(w.shape) == 2)]
    mats = lambda *shape: tf.constant(rng.standard_normal(shape).astype(np.float32))  # noqa
    used = int(np.sum(np.any(x != 0, axis=0)))  # input features not zero in every example

    def matmuls(dims):
        """(GFLOP, a tf.function running the exact product's matmuls for these shapes)."""
        layers = [dict(a=mats(n, i), ad=mats(n, i), d=mats(n, o), dd=mats(n, o), w=mats(i, o),
                       v=mats(i, o)) for i, o in dims]

        @tf.function
        def run():
            total = tf.constant(0.0)
            for l, m in enumerate(layers):
                outs = [tf.matmul(m["a"], m["v"]), tf.matmul(m["a"], m["dd"], transpose_a=True)]
                if l > 0:
                    outs += [tf.matmul(m["ad"], m["w"]),
                             tf.matmul(m["ad"], m["d"], transpose_a=True),
                             tf.matmul(m["dd"], m["w"], transpose_b=True),
                             tf.matmul(m["d"], m["v"], transpose_b=True)]
                total += tf.add_n([tf.reduce_sum(t[:1, :1]) for t in outs])
            return total

        return sum(2 * n * i * o * (2 if l == 0 else 6) for l, (i, o) in enumerate(dims)), run

    flops, floor = matmuls(dims)
    flops_used, floor_used = matmuls([(used, dims[0][1])] + dims[1:])

    tasks = {
        "matmul floor": lambda: floor().numpy(),
        "floor, used inputs": lambda: floor_used().numpy(),
        "hw1_tf (linearised)": lambda: flat.hvp(v),
        "hw1_tf double backprop": lambda: double.hvp(v),
        "PyHessian 0.1": lambda: torch.autograd.grad(ph.gradsH, ph.params, grad_outputs=v_torch,
                                                     retain_graph=True),
    }
    for fn in tasks.values():
        fn()
    assert flat._hvp_choice[0] == "linearised", flat._hvp_choice
    best = {k: float("inf") for k in tasks}
    # one thread: CPU seconds (load-robust); several: wall seconds (CPU time counts each)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    for _ in range(args.rounds):
        for name, fn in tasks.items():
            start = clock()
            for _ in range(args.repeats):
                fn()
            best[name] = min(best[name], (clock() - start) / args.repeats)
    print(f"MNIST MLP 784-256-256-256-10, {flat.num_params} parameters, {n} examples; "
          f"{args.threads} thread(s) each; {'CPU' if args.threads == 1 else 'wall'} ms per "
          f"product, min of {args.rounds} rounds x {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"the exact product's matmuls: {flops / 1e9:.1f} GFLOP; {flops_used / 1e9:.1f} GFLOP "
          f"without the {dims[0][0] - used} input features that are zero in every example "
          "(hw1_tf drops them)")
    print(f"matmul speed: {flops / best['matmul floor'] / 1e9:.1f} GFLOP/s (dense floor), "
          f"{flops_used / best['floor, used inputs'] / 1e9:.1f} GFLOP/s (used inputs)")
    for name, t in best.items():
        print(f"  {name:<24} {t * 1e3:8.1f} ms  {t / best['matmul floor']:5.2f}x the floor")
    ours, theirs = best["hw1_tf (linearised)"], best["PyHessian 0.1"]
    print(f"PyHessian / hw1_tf = {theirs / ours:.2f}x; the ceiling of an exact product here, "
          f"PyHessian / floor = {theirs / best['matmul floor']:.2f}x "
          f"({theirs / best['floor, used inputs']:.2f}x on the used inputs)")


if __name__ == "__main__":
    main()
