"""Helpers shared by the dataset loaders: the one error type and atomic writes."""
import contextlib
import os
import tempfile
from pathlib import Path


class DatasetError(RuntimeError):
    """A dataset is unknown, missing or malformed. The message is one line that
    says what to do (where to put which files, or which command makes them)."""


@contextlib.contextmanager
def atomic_open(path):
    """Open a temporary binary file beside `path`; on success rename it onto
    `path`, on any error delete it. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            yield handle
        os.chmod(handle.name, 0o644)  # temp files are created 0600; give a data file's usual mode
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
