"""`maps.npz` written and read one map at a time: memory and disk hold no more than one map and the archive.

`NpzMapWriter` writes what `numpy.savez_compressed(path, maps=..., times=...)` would, without knowing the number
of maps in advance and without a temporary copy of them: the archive's `maps.npy` entry is one deflate stream
whose first block is a *stored* (uncompressed) block holding the `.npy` header, so the header can be rewritten in
place once the count is known; the maps follow as ordinary compressed blocks. The entry's CRC-32 is that of the
header combined with that of the maps (`crc32_combine`, as zlib computes it). Every size is written in ZIP64 form,
so archives beyond 4 GB of maps need no other path. `numpy.load` and `zipfile` read the result as any `.npz`.

`iter_npz_maps` reads the maps of such an archive (or of any `.npz` with a C-ordered `maps` array) one at a time.
"""

from __future__ import annotations

import os
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["NpzMapWriter", "crc32_combine", "iter_npz_maps"]

_HEADER_BYTES = 128  # the .npy header, magic included: a multiple of 64, room for any (frames, height, width)
_ZIP64_LIMIT = 0xFFFFFFFF


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[row]) for row in range(32)]


def crc32_combine(crc_first: int, crc_second: int, length_second: int) -> int:
    """CRC-32 of `first + second` from the CRC-32s of both parts and the length of the second (zlib's
    `crc32_combine`): the first CRC is advanced over `length_second` zero bytes by squaring the one-zero-bit
    operator in GF(2), then the second CRC is added."""
    if length_second <= 0:
        return crc_first
    odd = [0xEDB88320] + [1 << row for row in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # the first pass: one zero byte
        if length_second & 1:
            crc_first = _gf2_times(even, crc_first)
        length_second >>= 1
        if not length_second:
            break
        odd = _gf2_square(even)
        if length_second & 1:
            crc_first = _gf2_times(odd, crc_first)
        length_second >>= 1
        if not length_second:
            break
    return crc_first ^ crc_second


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 `.npy` header for C-ordered uint8 data of `shape`, padded to `_HEADER_BYTES`."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(int(n) for n in shape)!r}, }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    if len(text) != _HEADER_BYTES - 10:
        raise ValueError(f"maps of shape {shape} need a longer .npy header than {_HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _dos_time() -> tuple[int, int]:
    now = time.localtime()
    return (now.tm_hour << 11) | (now.tm_min << 5) | (now.tm_sec // 2), ((now.tm_year - 1980) << 9) | (now.tm_mon << 5) | now.tm_mday


class _Entry:
    """One deflated member: where its local header is, and its CRC-32 and sizes once written."""

    def __init__(self, name: str, offset: int):
        self.name, self.offset = name.encode(), offset
        self.crc, self.compressed, self.size = 0, 0, 0
        self.time, self.date = _dos_time()

    def local_header(self) -> bytes:
        extra = struct.pack("<HHQQ", 1, 16, self.size, self.compressed)
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, zipfile.ZIP_DEFLATED, self.time, self.date, self.crc,
                           _ZIP64_LIMIT, _ZIP64_LIMIT, len(self.name), len(extra)) + self.name + extra

    def central_header(self) -> bytes:
        extra = struct.pack("<HHQQQ", 1, 24, self.size, self.compressed, self.offset)
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 45, 45, 0, zipfile.ZIP_DEFLATED, self.time, self.date,
                           self.crc, _ZIP64_LIMIT, _ZIP64_LIMIT, len(self.name), len(extra), 0, 0, 0, 0o100644 << 16,
                           _ZIP64_LIMIT) + self.name + extra


class NpzMapWriter:
    """Write `maps` (frames, height, width) uint8 and `times` (frames,) float64 as `path`, one map at a time.

    The archive is written as `<path>.tmp` and renamed when `close` completes; `discard` removes it. Memory holds
    the deflate state and the times; nothing else grows with the number of maps.
    """

    def __init__(self, path: str | os.PathLike, level: int = 6):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".tmp")
        self.file = open(self.partial, "wb")
        self.shape: tuple[int, int] | None = None
        self.times: list[float] = []
        self.maps = _Entry("maps.npy", 0)
        self.file.write(self.maps.local_header())
        self.data_start = self.file.tell()
        # A stored deflate block (BFINAL 0, BTYPE 00: one zero byte, then LEN and its complement) holding the header.
        self.file.write(struct.pack("<BHH", 0, _HEADER_BYTES, _HEADER_BYTES ^ 0xFFFF) + bytes(_HEADER_BYTES))
        self.header_at = self.file.tell() - _HEADER_BYTES
        self.compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        self.data_crc, self.data_size = 0, 0

    def add(self, saliency_map: np.ndarray, time_s: float) -> None:
        saliency_map = np.ascontiguousarray(saliency_map)
        if saliency_map.dtype != np.uint8 or saliency_map.ndim != 2:
            raise ValueError(f"maps must be (height, width) uint8, got {saliency_map.shape} {saliency_map.dtype}")
        if self.shape is None:
            self.shape = saliency_map.shape
        elif saliency_map.shape != self.shape:
            raise ValueError(f"all maps must have the shape of the first one, {self.shape}; got {saliency_map.shape}")
        data = saliency_map.tobytes()
        self.data_crc = zlib.crc32(data, self.data_crc)
        self.data_size += len(data)
        self.file.write(self.compressor.compress(data))
        self.times.append(float(time_s))

    def close(self) -> Path:
        if self.shape is None:
            self.discard()
            raise ValueError("NpzMapWriter got no maps")
        self.file.write(self.compressor.flush(zlib.Z_FINISH))
        header = _npy_header((len(self.times), *self.shape))
        entry = self.maps
        entry.crc = crc32_combine(zlib.crc32(header), self.data_crc, self.data_size)
        entry.size, entry.compressed = _HEADER_BYTES + self.data_size, self.file.tell() - self.data_start
        end = self.file.tell()
        self.file.seek(self.header_at)
        self.file.write(header)
        self.file.seek(entry.offset)
        self.file.write(entry.local_header())
        self.file.seek(end)
        times = self._write_times()
        self._write_directory([entry, times])
        self.file.close()
        os.replace(self.partial, self.path)
        return self.path

    def _write_times(self) -> _Entry:
        from io import BytesIO

        buffer = BytesIO()
        np.lib.format.write_array(buffer, np.asarray(self.times, dtype=np.float64))
        data = buffer.getvalue()
        entry = _Entry("times.npy", self.file.tell())
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        packed = compressor.compress(data) + compressor.flush()
        entry.crc, entry.size, entry.compressed = zlib.crc32(data), len(data), len(packed)
        self.file.write(entry.local_header() + packed)
        return entry

    def _write_directory(self, entries: list[_Entry]) -> None:
        start = self.file.tell()
        for entry in entries:
            self.file.write(entry.central_header())
        size, end = self.file.tell() - start, self.file.tell()
        count = len(entries)
        self.file.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, start))
        self.file.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        self.file.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, min(size, _ZIP64_LIMIT),
                                    min(start, _ZIP64_LIMIT), 0))

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.partial.unlink(missing_ok=True)


def iter_npz_maps(path: str | os.PathLike, key: str = "maps") -> Iterator[np.ndarray]:
    """The `key` array of an `.npz` one first-axis slice at a time (for `maps.npz`: one (height, width) map)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as entry:
        version = np.lib.format.read_magic(entry)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(entry)
        if fortran_order or dtype.hasobject or len(shape) < 1:
            raise ValueError(f"{path}: {key} must be a C-ordered array of numbers, got {dtype} of shape {shape}")
        item_shape = shape[1:]
        item_bytes = int(np.prod(item_shape, dtype=np.int64)) * dtype.itemsize
        for index in range(shape[0]):
            data = entry.read(item_bytes)
            if len(data) != item_bytes:
                raise ValueError(f"{path}: {key} ends after {index} of its {shape[0]} entries")
            yield np.frombuffer(data, dtype=dtype).reshape(item_shape)
