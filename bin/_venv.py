"""Imported first by every binary: run it with the project's environment whatever `python3` the
shebang found. Stdlib only, because it runs before the project's packages are importable.

`make` installs hw1_tf (editable) and its dependencies into <project>/.venv. A binary started
with another interpreter re-executes itself with .venv/bin/python; with no .venv it goes on
with the interpreter it has (hw1_tf installed there with pip), and if that one lacks the
project's packages it says in one line how to install them.
"""
import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_VENV_PYTHON = _ROOT / ".venv" / "bin" / "python"


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == (_ROOT / ".venv").resolve()


if _VENV_PYTHON.exists() and not _in_venv() and not os.environ.get("HW1_NO_VENV"):
    os.execv(str(_VENV_PYTHON), [str(_VENV_PYTHON), *sys.argv])

try:
    import absl  # noqa: F401
    import hw1_tf  # noqa: F401
except ImportError as e:
    print(f"error: {e.name} is not installed for {sys.executable}; run `make install` in "
          f"{_ROOT} (or `pip install -e {_ROOT}`)", file=sys.stderr)
    sys.exit(1)
