"""Shard files written in a background thread, streamed to disk and hashed as they are written.

A shard is a ``safetensors`` file whose tensors are concatenations of per-text pieces (the hidden
states of each text, one layer after another). :func:`write_safetensors` writes the pieces one
after the other into their place in the file, without concatenating them first, and feeds the
same bytes to SHA-256, so the file is never read back to be hashed. The bytes are exactly those
of ``safetensors.torch.save_file`` on the concatenated tensors (same header, same tensor order:
by dtype, widest first, then by name; the header padded with spaces to 8 bytes; tested).

:class:`ShardWriter` runs the writes in one thread behind a bounded queue, so the next batches'
forward runs while a shard goes to disk; an error in the thread is raised in the caller at the
next ``put`` or at ``close``. :class:`ShardReader` reads rows of such a file back with plain reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from diff_erank.storage import atomic_path

#: safetensors' dtype names, in the order of its Rust ``Dtype`` enum (the file orders tensors by
#: it, last first).
_DTYPES = [
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.int16, "I16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (torch.float32, "F32"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
]
_NAME = {dt: name for dt, name in _DTYPES}
_DTYPE = {name: dt for dt, name in _DTYPES}
_RANK = {dt: k for k, (dt, _) in enumerate(_DTYPES)}

Pieces = Sequence[torch.Tensor]


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().view(-1).view(torch.uint8).numpy())


def write_safetensors(
    tensors: dict[str, torch.Tensor | Pieces], path: str | Path, metadata: dict[str, str] | None = None
) -> str:
    """Write a safetensors file (atomically) from whole tensors or lists of row blocks; its SHA-256.

    A list of pieces stands for ``torch.cat(pieces)``: same dtype and trailing shape, concatenated
    along the first axis.
    """
    parts: dict[str, list[torch.Tensor]] = {
        k: [v] if isinstance(v, torch.Tensor) else list(v) for k, v in tensors.items()
    }
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    order = sorted(parts, key=lambda k: (-_RANK[parts[k][0].dtype], k))
    start = 0
    for k in order:
        ps = parts[k]
        dtype, tail = ps[0].dtype, tuple(ps[0].shape[1:])
        if any(p.dtype != dtype or tuple(p.shape[1:]) != tail for p in ps):
            raise ValueError(f"pieces of {k!r} differ in dtype or trailing shape")
        rows = sum(int(p.shape[0]) for p in ps) if ps[0].ndim else None
        shape = [] if rows is None else [rows, *tail]
        size = sum(p.numel() for p in ps) * ps[0].element_size()
        header[k] = {"dtype": _NAME[dtype], "shape": shape, "data_offsets": [start, start + size]}
        start += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    h = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in (len(blob).to_bytes(8, "little"), blob):
            f.write(chunk)
            h.update(chunk)
        for k in order:
            for p in parts[k]:
                b = _bytes(p)
                f.write(b)
                h.update(b)
    return h.hexdigest()


class ShardReader:
    """Rows of the tensors of a safetensors file, read with plain ``read`` calls.

    Not a memory map (``safe_open`` maps the whole file): a shard can be hundreds of MB, and a
    private map of it counts against the job's ``RLIMIT_DATA`` cap (:func:`diff_erank.sizing.limit_memory`)
    however few of its rows are read. Here the process holds only the rows it asked for.
    """

    def __init__(self, path: str | Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close / the context manager)
        n = int.from_bytes(self._f.read(8), "little")
        self.header: dict[str, Any] = json.loads(self._f.read(n))
        self.header.pop("__metadata__", None)
        self._base = 8 + n

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def shape(self, name: str) -> list[int]:
        return list(self.header[name]["shape"])

    def rows(self, name: str, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` of tensor ``name`` (a copy in memory)."""
        entry = self.header[name]
        dtype, shape = _DTYPE[entry["dtype"]], entry["shape"]
        if not 0 <= a <= b <= shape[0]:
            raise ValueError(f"rows {a}:{b} of {name!r} outside its {shape[0]} rows")
        row = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        start, end = entry["data_offsets"]
        if end - start != shape[0] * row:
            raise ValueError(f"{name!r}: {end - start} bytes for shape {shape}")
        if a == b:
            return torch.empty((0, *shape[1:]), dtype=dtype)
        self._f.seek(self._base + start + a * row)
        buf = bytearray(self._f.read((b - a) * row))
        if len(buf) != (b - a) * row:
            raise ValueError(f"{name!r}: the file ends inside rows {a}:{b}")
        return torch.frombuffer(buf, dtype=dtype).reshape(b - a, *shape[1:])

    def tensor(self, name: str) -> torch.Tensor:
        return self.rows(name, 0, self.shape(name)[0])


class ShardWriter:
    """Run ``job()`` callables in one writer thread, at most ``depth`` of them waiting.

    Results come back in submission order from :meth:`close`. The bounded queue keeps the
    memory of waiting shards at ``depth`` shards while the forward goes on.
    """

    def __init__(self, depth: int = 2) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._results: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._results.append(job())
                except BaseException as exc:  # handed to the caller at its next put/close
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, job: Callable[[], Any]) -> None:
        self._raise()
        self._q.put(job)

    def close(self) -> list[Any]:
        """Wait for every job; raise the first error; the results in submission order."""
        self._q.put(None)
        self._thread.join()
        self._raise()
        return self._results

    def abandon(self) -> None:
        """Stop after the jobs already queued (the caller is failing; nothing is raised)."""
        self._q.put(None)
        self._thread.join()
