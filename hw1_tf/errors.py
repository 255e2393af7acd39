"""User-facing errors.

Anything a user can cause (a bad flag value, a missing or corrupt data file, a missing model, a
NaN loss) is raised as a `Hw1Error` with one line that names the problem and says what to do.
`hw1_tf.cli` turns it into that one line on stderr and a non-zero exit, never a traceback.
"""


class Hw1Error(Exception):
    """An error whose message is meant for the user, one line, no traceback."""


class DataError(Hw1Error):
    """A dataset is missing, truncated or corrupt."""


class ModelNotFoundError(Hw1Error):
    """A SavedModel or results file that an experiment reuses is not there."""


class TrainingDivergedError(Hw1Error):
    """The loss became NaN or infinite."""
