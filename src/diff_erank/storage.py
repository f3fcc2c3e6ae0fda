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
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def unique_name(path: Path, tag: str) -> Path:
    """A sibling of ``path`` no other process picks: host, pid and a random part."""
    return path.with_name(f".{path.name}.{tag}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished directory into place, replacing an old one, so a reader sees old or new.

    The finished directory is first renamed to a unique name beside ``final_dir`` (two publishers
    never share a staging name), then swapped with the old one in one step where the kernel can
    (``renameat2`` exchange), else the old one is renamed aside and the new one renamed in (a
    moment with neither, never a half-deleted one); the old copy is deleted after the swap.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = unique_name(final_dir, "new")
    os.replace(tmp_dir, staged)
    try:
        os.rename(staged, final_dir)  # nothing there yet: done
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise
    if _exchange(staged, final_dir):
        old = staged  # the swap left the old directory under the staging name
    else:
        old = unique_name(final_dir, "old")
        os.replace(final_dir, old)
        os.replace(staged, final_dir)
    if old.is_symlink() or old.is_file():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


# -- locks --------------------------------------------------------------------------------------------
#: errno of a lock request another process holds; of a filesystem that has no POSIX locks.
HELD = frozenset({errno.EAGAIN, errno.EACCES})
UNSUPPORTED = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})
#: ``DIFF_ERANK_LOCKS=file`` takes O_EXCL lock files even where fcntl answers: for mounts whose
#: locks are local to one node (Lustre ``localflock``), where two login nodes would both succeed.
LOCKS_ENV = "DIFF_ERANK_LOCKS"


class LockError(UserError, RuntimeError):
    """A lock that can be neither taken nor refused with a reason (the message names the file)."""


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, working directory {os.getcwd()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class FileLock:
    """An exclusive lock on ``path``: a POSIX record lock where the filesystem has them, otherwise
    (ENOSYS/ENOLCK, e.g. Lustre mounted ``noflock``) an ``O_EXCL`` file ``<path>.excl`` holding
    the holder's host and pid.

    "Held" (EAGAIN/EACCES) and "unsupported" are told apart: only the first means another run.
    A record lock dies with its process; an ``O_EXCL`` file outlives a killed one, so a file left
    by a dead process of this host is taken over, and one from another host is reported with its
    holder and the command that clears it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.excl = Path(f"{self.path}.excl")
        self.method: str | None = None  # "fcntl" or "file" once held
        self._file: Any = None

    # fcntl ------------------------------------------------------------------------------------------
    def _try_fcntl(self) -> bool | None:
        """True: taken; False: held by another process; None: this filesystem has no such locks."""
        f = open(self.path, "a+")  # noqa: SIM115 (kept open while held: closing releases the lock)
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if exc.errno in HELD:
                return False
            if exc.errno in UNSUPPORTED:
                log.info("%s: no POSIX locks here (%s): using an O_EXCL lock file", self.path, exc.strerror)
                return None
            raise LockError(f"cannot lock {self.path}: {exc.strerror} (errno {exc.errno})") from None
        f.seek(0)
        f.truncate()
        f.write(_me() + "\n")
        f.flush()
        self._file, self.method = f, "fcntl"
        return True

    # O_EXCL -----------------------------------------------------------------------------------------
    def _try_file(self) -> bool:
        record = f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n{_me()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.excl, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
            except FileExistsError:
                if not self._clear_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self._file, self.method = record, "file"
            return True
        return False

    @staticmethod
    def _owner(path: Path) -> tuple[str, int] | None:
        try:
            host, pid = path.read_text().split()[:2]
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def _clear_stale(self) -> bool:
        """Remove a lock file whose holder, a process of this host, is gone; True if it is gone."""
        owner = self._owner(self.excl)
        if owner is None:
            return not self.excl.exists()
        if owner[0] != socket.gethostname() or _pid_alive(owner[1]):
            return False
        aside = unique_name(self.excl, "stale")
        try:
            os.rename(self.excl, aside)  # one remover wins
        except FileNotFoundError:
            return True
        if self._owner(aside) != owner:  # a fresh file was made meanwhile: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.excl)
        aside.unlink(missing_ok=True)
        log.warning("%s: removed the lock file of process %d, which no longer runs", self.excl, owner[1])
        return True

    # public -----------------------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take the lock if free; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if os.environ.get(LOCKS_ENV, "auto") != "file":
            got = self._try_fcntl()
            if got is not None:
                if got and self.excl.exists() and not self._clear_stale():  # held the other way
                    self.release()
                    return False
                return got
        return self._try_file()

    def acquire(self, poll: float = 1.0) -> None:
        """Wait until the lock is ours, asking again every ``poll`` seconds."""
        warned = False
        while not self.try_acquire():
            owner = self._owner(self.excl)
            if not warned and owner and owner[0] != socket.gethostname():
                log.warning(
                    "%s is held by pid %d on %s: waiting (if that process is gone, delete %s)",
                    self.path, owner[1], owner[0], self.excl,
                )
                warned = True
            time.sleep(poll)

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (host, pid, directory)."""
        for p in (self.excl, self.path):
            with contextlib.suppress(OSError):
                lines = p.read_text().strip().splitlines()
                if lines:
                    return lines[-1]
        return "unknown process"

    def release(self) -> None:
        if self.method == "fcntl":
            self._file.close()
        elif self.method == "file" and self._owner(self.excl) == (socket.gethostname(), os.getpid()):
            self.excl.unlink(missing_ok=True)
        self.method, self._file = None, None


@contextlib.contextmanager
def held(path: str | Path, wait_message: str | None = None) -> Iterator[FileLock]:
    """Hold the lock on ``path`` for the block, waiting for another holder if there is one."""
    lock = FileLock(path)
    if not lock.try_acquire():
        if wait_message:
            log.warning("%s (%s)", wait_message, lock.holder())
        lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


_LOCKS: dict[str, FileLock] = {}


class RunLockedError(RuntimeError):
    """The run folder is in use by another run (another checkout sharing ``results_dir``)."""


def lock_run_dir(run_dir: str | Path) -> Path:
    """Hold an exclusive lock on ``<run_dir>/.run.lock`` for the rest of this process.

    Snakemake's own lock lives in its working directory, so two checkouts sharing one
    ``results_dir`` would both run. This is a POSIX record lock (``fcntl.lockf``, also honoured
    over NFS): the kernel releases it when the process ends however it ends (Ctrl-C, SIGKILL), and
    it is not inherited by child processes, so a rerun after an interrupt never finds a stale
    lock. Where the filesystem has no POSIX locks it is an ``O_EXCL`` file (:class:`FileLock`).
    Taking it twice in one process is a no-op.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".run.lock"
    key = str(path.resolve())
    if key in _LOCKS:
        return path
    lock = FileLock(path)
    if not lock.try_acquire():
        raise RunLockedError(
            f"{run_dir} is in use by another run ({lock.holder()}): wait for it to finish, "
            "or give this run its own results_dir"
        )
    if lock.method == "file":
        import atexit

        atexit.register(lock.release)
    _LOCKS[key] = lock
    return path
