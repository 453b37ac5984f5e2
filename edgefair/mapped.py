"""Eval arrays read from disk as they are used, not held in memory.

The numeric arrays of an uncompressed .npz (what ``np.savez`` writes) are mapped read-only from
the file: a row costs memory only while a pass over the rows (inference, the finite-value check,
the content hash) is on it. Every pass goes through ``row_chunks`` or ``Dataset.batches``, which
hand the pages back to the kernel (``MADV_DONTNEED``) after every ``RELEASE_BYTES``, so the
process's resident memory does not grow with the eval set. Compressed members, object arrays and
Fortran-ordered arrays are read whole, as before; so are .csv and .parquet tables.

Nothing is unpickled: a member whose header names an object dtype is refused like ``np.load``
with ``allow_pickle=False`` refuses it.

A mapped file must not change while a run reads it: before every run of rows and at the end of a
pass the file must still be the one mapped (device, inode, size, modification and change times);
a changed file is a DataError naming it, so statistics are never computed from a mix of two files.
A mapped array of another dtype than the model's is converted into a mapped temporary file (``cast``).
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
    # ctime too: it changes on every write, even one that puts the old mtime back (cp -p, rsync -t)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def map_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Read-only arrays mapped from the uncompressed, C-ordered numeric members of an .npz, by
    name (as ``np.load`` names them); None when any member is compressed, object or
    Fortran-ordered, or does not fit inside its own zip entry (the caller reads the file whole,
    and ``np.load`` reports what is wrong with it)."""
    with open(path, "rb") as f:  # one open file: the directory, the headers and the mapping agree
        with zipfile.ZipFile(f) as z:
            infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
        if not infos or any(i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 0x1 for i in infos):
            return None
        spans = {}
        for info in infos:
            f.seek(info.header_offset)
            raw = f.read(_LOCAL_HEADER.size)
            if len(raw) < _LOCAL_HEADER.size:
                return None
            fields = _LOCAL_HEADER.unpack(raw)
            if fields[0] != b"PK\x03\x04":
                return None
            member_start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
            f.seek(member_start)
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    return None
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
            except ValueError:
                return None
            if fortran or dtype.hasobject or dtype.kind not in "biufUS":
                return None
            count = int(np.prod(shape, dtype=np.int64))
            # the array must fill its member exactly: a corrupt header would read into the next one
            if f.tell() + count * dtype.itemsize != member_start + info.compress_size:
                return None
            spans[info.filename[: -len(".npy")]] = (f.tell(), count, shape, dtype)
        if not spans or max(o + c * d.itemsize for o, c, _, d in spans.values()) > os.fstat(f.fileno()).st_size:
            return None
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        _MAPPED[id(view)] = (Path(path), _identity(os.fstat(f.fileno())))
        weakref.finalize(view, _MAPPED.pop, id(view), None)
    return {name: np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)
            for name, (offset, count, shape, dtype) in spans.items()}


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


def cast(arr: np.ndarray, dtype: np.dtype, what: str = "data.eval") -> np.ndarray:
    """``arr`` as ``dtype``. A mapped array of another dtype (a float64 file for a float32 model)
    is converted run by run into an unlinked temporary file (``tempfile.gettempdir()``) that is
    then mapped read-only, so the conversion does not hold the rows in memory either; any other
    array is converted in memory, as ``astype`` does. ``what`` names the array in errors: a
    temporary folder that is full or cannot be written is a DataError naming it and the size."""
    import tempfile

    dtype = np.dtype(dtype)
    if arr.dtype == dtype or mapping_of(arr) is None or arr.size == 0:
        return np.ascontiguousarray(arr.astype(dtype, copy=False))
    folder = tempfile.gettempdir()
    need = arr.size * dtype.itemsize
    try:
        # written with write(), which reports a full disk as an OSError (stores into a mapping of
        # a sparse file would be SIGBUS), then mapped read-only; unlinked: gone with its mapping
        with tempfile.TemporaryFile(prefix="edgefair-cast-", dir=folder) as f:
            for chunk in row_chunks({"a": arr}):
                f.write(np.ascontiguousarray(chunk["a"], dtype=dtype).tobytes())
            f.flush()
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise DataError(f"{what}: cannot convert it from {arr.dtype} to the model's {dtype} in the temporary folder "
                        f"{folder} ({e.strerror or e}); it needs {need / 1e6:.0f} MB there (set TMPDIR, or store the "
                        f"array as {dtype})") from None
    return np.frombuffer(view, dtype=dtype, count=arr.size).reshape(arr.shape)


def row_chunks(arrays: Mapping[str, np.ndarray], rows: int | None = None, *, multiple: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """The first ``rows`` rows of the arrays in consecutive slices of about ``RELEASE_BYTES``, a
    multiple of ``multiple`` rows each (so that batches cut from them follow the batch grid of
    row 0), releasing mapped pages as it goes. Before each slice and at the end, a mapped file
    must still be the one mapped (``check_unchanged``): a file changed between passes is a
    DataError, not a crash on its missing pages."""
    if not arrays:
        return
    n = len(next(iter(arrays.values()))) if rows is None else rows
    per_row = max(1, sum(a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays.values()))
    step = max(1, RELEASE_BYTES // per_row)
    step = max(multiple, step // multiple * multiple)
    try:
        for start in range(0, n, step):
            check_unchanged(arrays)
            stop = min(start + step, n)
            yield {k: v[start:stop] for k, v in arrays.items()}
            release(arrays)
    finally:
        release(arrays)
    check_unchanged(arrays)  # a pass that ran to its end read one file, the one mapped
