"""Eval arrays read from disk as they are used, not held in memory.

The numeric arrays of an uncompressed .npz (what ``np.savez`` writes) are mapped read-only from
the file: a row costs memory only while a pass over the rows (inference, the finite-value check,
the content hash) is on it. Every pass goes through ``row_chunks`` or ``Dataset.batches``, which
hand the pages back to the kernel (``MADV_DONTNEED``) after every ``RELEASE_BYTES``, so the
process's resident memory does not grow with the eval set. Compressed members, object arrays and
Fortran-ordered arrays are read whole, as before; so are .csv and .parquet tables.

Nothing is unpickled: a member whose header names an object dtype is refused like ``np.load``
with ``allow_pickle=False`` refuses it.

A mapped file must not change while a run reads it: every pass ends by checking that the file is
still the one mapped (device, inode, size, modification time), and a changed file is a DataError
naming it, so statistics are never computed from a mix of two files.
"""

from __future__ import annotations

import mmap
import os
import struct
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import DataError

RELEASE_BYTES = 32 * 2**20  # pages of mapped rows handed back after this many bytes of a pass
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header (30 bytes)
_MAPPED: dict[int, tuple[Path, tuple[int, ...]]] = {}  # id(mapping) -> (file, identity when mapped)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def map_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Read-only arrays mapped from the uncompressed, C-ordered numeric members of an .npz, by
    name (as ``np.load`` names them); None when any member is compressed, object or
    Fortran-ordered (the caller reads the file whole)."""
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
        if not infos or any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 0x1 for i in infos):
            return None
    spans = {}
    with open(path, "rb") as f:
        for info in infos:
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                return None
            f.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject or dtype.kind not in "biufUS":
                return None
            spans[info.filename[: -len(".npy")]] = (f.tell(), shape, dtype)
        if not spans:
            return None
        size = f.seek(0, 2)
        for offset, shape, dtype in spans.values():
            if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > size:
                return None  # a truncated file: np.load reports it
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        _MAPPED[id(view)] = (Path(path), _identity(os.fstat(f.fileno())))
        weakref.finalize(view, _MAPPED.pop, id(view), None)
    return {
        name: np.frombuffer(view, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)
        for name, (offset, shape, dtype) in spans.items()
    }


def mapping_of(arr: np.ndarray) -> mmap.mmap | None:
    """The file mapping an array (or a view of one) reads from, if any."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's base
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def release(arrays: Mapping[str, np.ndarray] | list[np.ndarray]) -> None:
    """Hand the pages of mapped arrays back to the kernel; the next read maps them again from the
    file (or the page cache). A no-op for arrays in memory and where madvise is missing."""
    values = arrays.values() if isinstance(arrays, Mapping) else arrays
    seen = set()
    for arr in values:
        view = mapping_of(arr)
        if view is not None and id(view) not in seen and hasattr(view, "madvise"):
            seen.add(id(view))
            view.madvise(mmap.MADV_DONTNEED)


def check_unchanged(arrays: Mapping[str, np.ndarray]) -> None:
    """DataError when the file a mapped array reads from is no longer the file that was mapped."""
    for arr in arrays.values():
        view = mapping_of(arr)
        if view is None or id(view) not in _MAPPED:
            continue
        path, then = _MAPPED[id(view)]
        try:
            now = _identity(os.stat(path))
        except OSError:
            now = None
        if now != then:
            raise DataError(f"data.eval: {path} changed while edgefair read it; run again once it is written")


def row_chunks(arrays: Mapping[str, np.ndarray], rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The arrays in consecutive row slices of about ``RELEASE_BYTES``, releasing mapped pages as
    it goes (and at the end), so a pass over a mapped eval set stays small in memory."""
    if not arrays:
        return
    n = len(next(iter(arrays.values()))) if rows is None else rows
    per_row = max(1, sum(a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays.values()))
    step = max(1, RELEASE_BYTES // per_row)
    try:
        for start in range(0, n, step):
            yield {k: v[start : start + step] for k, v in arrays.items()}
            release(arrays)
    finally:
        release(arrays)
    check_unchanged(arrays)  # a pass that ran to its end read one file, the one mapped
