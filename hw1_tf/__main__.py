"""`python -m hw1_tf <experiment> [flags]`: the experiment's binary without a file in bin/ (how
`bin/run_all` starts each experiment, registered ones included)."""

import sys

from hw1_tf import cli, experiments, store
from hw1_tf.errors import Hw1Error

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    print("usage error: python -m hw1_tf <experiment> [--flags]", file=sys.stderr)
    sys.exit(2)
name = sys.argv.pop(1)
try:
    experiments.get(name)
except Hw1Error as e:
    print(f"usage error: {e}", file=sys.stderr)
    sys.exit(2)
binary = store.project_root() / "bin" / f"run_{name}"
# the command recorded in the results: the binary's, as if it had been started
sys.argv[0] = str(binary) if binary.is_file() else f"python -m hw1_tf {name}"
cli.run_experiment(name)
