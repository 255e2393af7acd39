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


class FileSystemError(Hw1Error):
    """A file or folder could not be created, written or moved (permission, read-only or full
    file system, missing parent, a special file system)."""


def filesystem_error(path, error: OSError, choose: str = "--output_dir") -> FileSystemError:
    """The one line of an OSError met while writing `path`: what happened and what to do
    (`choose` names the flag that picks another place)."""
    import errno

    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or str(error)
    if code == errno.ENOSPC or code == errno.EDQUOT:
        todo = f"free some space there or choose another {choose}"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = f"make it writable or choose another {choose}"
    elif code in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        todo = (f"choose a {choose} whose parent folders exist and are folders (no file or "
                "broken link in the way)")
    else:
        todo = f"choose another {choose} (on an ordinary disk)"
    return FileSystemError(f"{path}: could not be written ({reason}); {todo}; files written "
                           "before are intact")
