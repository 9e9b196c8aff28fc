"""The classifier's cache files: NumPy `.npz` archives of arrays and JSON, no pickle.

Written atomically (a temporary file in the same directory, then renamed), so a crash leaves
the old file or the new one; read back as a miss, never an error, when missing or unreadable.
A cache that cannot be written or read only costs the work it would have saved.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Arrays = dict[str, npt.NDArray[Any]]


def json_array(value: object) -> npt.NDArray[np.uint8]:
    """`value` as UTF-8 JSON in a byte array (a NumPy string array would pad every string
    to the longest one, in UTF-32)."""
    return np.frombuffer(json.dumps(value).encode("utf-8"), dtype=np.uint8)


def from_json_array(array: npt.NDArray[Any]) -> object:
    """The value `json_array` stored."""
    return json.loads(array.tobytes().decode("utf-8"))


def read_arrays(path: Path, what: str) -> Arrays | None:
    """Every array of the archive at `path`; None when it is missing or unreadable (logged,
    naming `what` it holds)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the unreadable %s %s: %s", what, path, exc)
        return None


def write_arrays(path: Path, arrays: Arrays, what: str) -> bool:
    """Write `arrays` to `path` atomically; False (logged) when it could not be written."""
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}-", suffix=".npz", delete=False
        ) as handle:
            temporary = handle.name
            np.savez(handle, allow_pickle=False, **arrays)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("could not write the %s %s: %s", what, path, exc)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        return False
    return True
