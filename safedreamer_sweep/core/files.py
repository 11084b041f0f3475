"""Files replaced atomically: a reader sees the old content or the new, never a mix, and a kill -9 at
any instant leaves one of the two (write a temp file beside it, fsync, rename, fsync the directory).
JSON-lines files are appended to, and a torn last line (killed mid-append) is skipped on reading.
A JSON document that does not parse is a StoreError (the store's error: a file is missing, corrupt or
inconsistent), which names the file and the fix.

Standard library only: exit records are written with it by processes that must start cheaply
(sweep/exitwatch.py runs once per cell).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A store file is missing, corrupt or inconsistent. The message names the file and the fix."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def json_line(row: Any) -> str:
    """`row` as one line of a JSON-lines file (numpy values and paths as plain JSON)."""
    return json.dumps(row, default=_json_default) + "\n"


def read_json(path: Path) -> Any | None:
    """The parsed document, or None when the file does not exist. A corrupt file is a StoreError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt. "
            f"Fix: restore it from a backup or move it aside; nothing was overwritten."
        ) from e


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSON-lines file. A torn last line (killed mid-append) is skipped."""
    rows: list[dict] = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return rows


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
