"""Helpers shared by the dataset loaders and the run bookkeeping: the dataset
error type and the project's one atomic-write helper."""
import contextlib
import os
import tempfile
import time
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # every temporary file starts so; a resume deletes those a kill left behind


class DatasetError(RuntimeError):
    """A dataset is unknown, missing or malformed. The message is one line that
    says what to do (where to put which files, or which command makes them)."""


@contextlib.contextmanager
def atomic_open(path):
    """Open a temporary binary file beside `path`; on success flush it to disk
    and rename it onto `path`, on any error delete it. A crash at any moment
    leaves the old file or the new one, never half of one: the rename is atomic
    within a folder, and the fsync before it keeps a power loss from leaving
    the new name on data that never reached the disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; data and runs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_temp_files(folder, older_than_s: float = 0.0) -> list:
    """Delete the temporary files that a kill during atomic_open left in
    `folder`, those last written over `older_than_s` seconds ago (a folder that
    another process may be writing to at the same moment keeps its fresh ones);
    returns their names."""
    cutoff, removed = time.time() - older_than_s, []
    for name in sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)):
        path = os.path.join(folder, name)
        try:
            if os.path.getmtime(path) <= cutoff:
                os.unlink(path)
                removed.append(name)
        except FileNotFoundError:  # renamed by its writer, or removed by another cleaner, meanwhile
            continue
    return removed


def read_with(dataset_class, root, where=None, **kwargs):
    """An instance of one of torchvision's dataset classes, read from `root`
    with download=False; anything it refuses (its md5 check, a file it cannot
    parse) becomes a one-line DatasetError naming `where` (the files it read,
    e.g. 'FOLDER (NAME, NAME)'), else `root`."""
    try:
        return dataset_class(root=str(root), download=False, **kwargs)
    except Exception as err:  # a third-party reader: its errors are many and not ours to list
        reason = (str(err).strip().splitlines() or ["no message"])[0]
        raise DatasetError(f"torchvision's {dataset_class.__name__} cannot read the files in {where or root} "
                           f"({type(err).__name__}: {reason}): they are corrupt or incomplete; "
                           "delete them and fetch them again") from None
