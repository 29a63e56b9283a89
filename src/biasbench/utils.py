"""Small shared helpers: atomic file writes and stable hashing."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give records the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, _w)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


_REQUIRED = object()


def read_json_record(path: str | os.PathLike, default: Any = _REQUIRED, key: str | None = None) -> Any:
    """Parse a JSON record. A missing file returns ``default`` (or is an error when none is given); an
    unreadable or invalid one, or with ``key`` one that is not an object holding ``key``, is a
    :class:`BiasbenchError` naming the file."""
    from .errors import BiasbenchError

    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        if default is _REQUIRED:
            raise BiasbenchError(f"missing record {path}") from None
        return default
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BiasbenchError(f"corrupt record {path}: {exc}") from None
    if key is not None and (not isinstance(rec, dict) or key not in rec):
        raise BiasbenchError(f"corrupt record {path}: no {key!r}")
    return rec


def stable_hash(obj: Any, length: int = 12) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys), truncated to ``length`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
