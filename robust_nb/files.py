"""Atomic file writes: a reader (or a crash) never sees half a file.

Every file the package writes -- checkpoints, cache entries, ``results.json``, ``results.md``,
figures, executed notebooks -- goes through :func:`atomic_write`: the data goes to a temporary
file in the same folder, is flushed to disk, and is moved over the target with ``os.replace``
(atomic on POSIX and Windows). On any error the temporary file is removed and the old file, if
there was one, is left as it was.

>>> atomic_write("results/quick/results.md", "| method | clean |\\n")
>>> atomic_write("run.pt", lambda f: torch.save(state, f))        # a writer for binary files
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (text as UTF-8, bytes, or a function that writes to a binary file) to
    ``path`` atomically; create the folder if needed. Returns ``path`` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
