"""Files that survive a crash and files from strangers that cannot run code.

Every file is written to a temporary name in its folder, flushed, fsynced and renamed,
then the folder is fsynced: a crash leaves the old file or the new one, never half of
one. Nothing here unpickles: tensors are read as safetensors, everything else as JSON,
with a size limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CharRNNError

# A config.json is a few kilobytes even with a large vocabulary; refuse anything absurd.
MAX_JSON_BYTES = 64 << 20


def _file_mode() -> int:
    # mkstemp creates files 0600; a checkpoint should get the usual mode under the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    write_atomic_with(path, lambda f: f.write(data))


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write(file)` writes: temporary name, fsync, rename, fsync."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- safe reads --------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CharRNNError(f"{what} {path} is {size} bytes, far too large to be genuine")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CharRNNError(f"{what} {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CharRNNError(f"{what} {path} is not valid JSON ({error})") from None
    except RecursionError:
        raise CharRNNError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    except OSError as error:
        raise CharRNNError(f"cannot read {what} {path}: {error.strerror}") from None


def read_tensors(path: Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (pickles included) is refused, never run."""
    if not path.is_file():
        raise CharRNNError(f"{what} {path} is missing")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CharRNNError(
            f"{what} {path} is not a readable safetensors file ({first_line(error)})"
        ) from None


def read_tensors_with_metadata(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = read_tensors(path, what)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CharRNNError(
            f"{what} {path} is not a readable safetensors file ({first_line(error)})"
        ) from None
    return tensors, metadata


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
