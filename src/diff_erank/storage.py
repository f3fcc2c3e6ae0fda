"""Writing results so that nothing half-written ever looks complete.

Every file is written under a temporary name in the same directory and renamed into place
(``os.replace`` is atomic on POSIX), so a killed job leaves either the old file, no file, or a
``.tmp`` leftover that no rule takes as an output.

Every parquet table carries the SHA-256 of its own bytes in its footer (see :func:`write_parquet`)
and :func:`read_parquet` checks it, so a table corrupted on disk (a flipped bit in a column
moves a published number and still decodes) stops the run with the file's name instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diff_erank.errors import UserError

log = logging.getLogger(__name__)

PROVENANCE_KEY = b"diff_erank.provenance"
DIGEST_KEY = b"diff_erank.sha256"
_PLACEHOLDER = b"0" * 64


class IntegrityError(UserError, RuntimeError):
    """A result file whose bytes are not the ones written; the message names the file."""


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared like any file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


#: The field of a checksummed JSON file (:func:`write_checked_json`) holding the SHA-256 of the rest.
JSON_DIGEST = "sha256_of_content"


def _json_digest(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != JSON_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_checked_json(obj: dict[str, Any], path: str | Path) -> None:
    """A JSON object with the SHA-256 of its own content in it (a manifest whose numbers feed the
    tables: a flipped digit in ``n_params`` must stop the run, not reorder the models)."""
    obj = dict(obj)
    obj[JSON_DIGEST] = _json_digest(obj)
    write_json(obj, path)


def read_checked_json(path: str | Path, what: str = "file", advice: str = "delete it and rerun") -> dict:
    """A JSON object written by :func:`write_checked_json`, after checking it; IntegrityError naming
    the file (and what to do) when it is unreadable, truncated, or its content is not the one written.
    A file without the field (written before checksums) is read as it is, with a warning."""
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as exc:
        raise IntegrityError(f"cannot read the {what} {path}: {exc.strerror}; {advice}") from None
    except ValueError as exc:
        raise IntegrityError(f"the {what} {path} is truncated or not JSON ({exc}); {advice}") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"the {what} {path} is not a JSON object; {advice}")
    if JSON_DIGEST not in obj:
        log.warning("%s carries no diff-erank checksum: read without verification", path)
        return obj
    if obj[JSON_DIGEST] != _json_digest(obj):
        raise IntegrityError(
            f"the {what} {path} is corrupt (its content differs from the SHA-256 recorded when it was "
            f"written); {advice}"
        )
    return {k: v for k, v in obj.items() if k != JSON_DIGEST}


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(df: pd.DataFrame, path: str | Path, provenance: dict[str, Any]) -> None:
    """Parquet with the provenance record in the file's own key-value metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str).encode()
    meta[DIGEST_KEY] = _PLACEHOLDER
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        _seal(tmp)


RERUN = "delete it and rerun"


class OutOfMemoryError(UserError, MemoryError):
    """A step that ran out of memory: the message names the file and the resource to raise."""


def out_of_memory(path: str | Path, exc: BaseException) -> OutOfMemoryError:
    return OutOfMemoryError(
        f"out of memory while reading {path} ({type(exc).__name__}): rerun with more memory "
        "(the rule's mem_mb, e.g. --set-resources <rule>:mem_mb=<MB>, or models.<name>.resources.mem_mb)"
    )


def _digest_slot(data: bytes, path: str | Path, advice: str = RERUN) -> int | None:
    """Offset of the 64 hex digits stored under DIGEST_KEY in the parquet footer (raw bytes)."""
    if len(data) < 12 or data[-4:] != b"PAR1":
        raise IntegrityError(f"{path} is not a complete parquet file (truncated?): {advice}")
    start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    key = data.find(DIGEST_KEY, max(start, 0))
    if key < 0:
        return None
    # thrift compact KeyValue: key bytes, a field header byte, the length varint (64), the value
    slot = key + len(DIGEST_KEY) + 2
    if data[slot - 1] != 64 or slot + 64 > len(data) - 8:
        raise IntegrityError(f"{path} is corrupt (its checksum field is damaged): {advice}")
    return slot


def _seal(path: Path) -> None:
    """Write the SHA-256 of the file (with the digest's own 64 bytes as zeros) into its footer.

    The digest has a fixed length, so filling it in moves no byte of the footer: the file is
    exactly the one parquet wrote, and the hash covers every byte of it, footer included.
    """
    data = bytearray(path.read_bytes())
    slot = _digest_slot(bytes(data), path)
    if slot is None or data[slot : slot + 64] != _PLACEHOLDER:
        raise RuntimeError(f"{path}: checksum placeholder not found where expected")
    data[slot : slot + 64] = hashlib.sha256(data).hexdigest().encode()
    path.write_bytes(data)


def verify_parquet(path: str | Path, advice: str = RERUN) -> bool:
    """Raise IntegrityError (naming the file) unless it is byte for byte the table written.

    Returns False for a table that carries no checksum (not written by diff-erank, e.g. a texts
    table made by hand, or by a version before checksums): it is read as it is, with a warning.
    A bit flip that erased the key itself leaves every data byte intact.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IntegrityError(f"cannot read {path}: {exc.strerror}") from None
    except MemoryError as exc:
        raise out_of_memory(path, exc) from None
    slot = _digest_slot(data, path, advice)
    if slot is None:
        log.warning("%s carries no diff-erank checksum: read without verification", path)
        return False
    recorded = data[slot : slot + 64]
    actual = hashlib.sha256(data[:slot] + _PLACEHOLDER + data[slot + 64 :]).hexdigest().encode()
    if actual != recorded:
        raise IntegrityError(
            f"{path} is corrupt (SHA-256 differs from the one recorded when it was written): {advice}"
        )
    return True


def read_parquet(path: str | Path, columns: list[str] | None = None, advice: str = RERUN) -> pd.DataFrame:
    """A table written by :func:`write_parquet`, after checking its checksum. Out of memory is said
    as such (with the resource to raise), not as an unreadable file."""
    verify_parquet(path, advice)
    try:
        return pd.read_parquet(path, columns=columns)
    except (MemoryError, pa.ArrowMemoryError) as exc:
        raise out_of_memory(path, exc) from None
    except Exception as exc:  # a footer damaged so that the hash still matched cannot happen
        raise IntegrityError(f"{path} is unreadable: {type(exc).__name__}: {exc}; {advice}") from None


def read_provenance(path: str | Path, advice: str = RERUN) -> dict[str, Any]:
    """The provenance record of a table; IntegrityError naming a truncated or damaged file."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (MemoryError, pa.ArrowMemoryError) as exc:
        raise out_of_memory(path, exc) from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # pyarrow's ArrowInvalid for a cut footer, and its kin
        raise IntegrityError(
            f"{path} is not a complete parquet file ({type(exc).__name__}): {advice}"
        ) from None
    if PROVENANCE_KEY not in meta:
        raise ValueError(f"{path} carries no diff-erank provenance")
    return json.loads(meta[PROVENANCE_KEY])


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished directory into place, replacing an old one."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


_LOCKS: dict[str, Any] = {}


class RunLockedError(RuntimeError):
    """The run folder is in use by another run (another checkout sharing ``results_dir``)."""


def lock_run_dir(run_dir: str | Path) -> Path:
    """Hold an exclusive lock on ``<run_dir>/.run.lock`` for the rest of this process.

    Snakemake's own lock lives in its working directory, so two checkouts sharing one
    ``results_dir`` would both run. This is a POSIX record lock (``fcntl.lockf``, also honoured
    over NFS): the kernel releases it when the process ends however it ends (Ctrl-C, SIGKILL), and
    it is not inherited by child processes, so a rerun after an interrupt never finds a stale
    lock. Taking it twice in one process is a no-op.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".run.lock"
    key = str(path.resolve())
    if key in _LOCKS:
        return path
    f = open(path, "a+")  # noqa: SIM115 (kept open: closing the file would release the lock)
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        f.close()
        raise RunLockedError(
            f"{run_dir} is in use by another run ({holder}): wait for it to finish, "
            "or give this run its own results_dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, working directory {os.getcwd()}\n")
    f.flush()
    _LOCKS[key] = f
    return path
