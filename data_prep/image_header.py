"""The size of an image read from its header alone, without decoding a pixel.

`image_size(source)` returns (height, width) for PNG, JPEG, BMP, GIF, WebP (VP8, VP8L, VP8X) and TIFF,
or None when the format is not recognised or the header is cut short (callers then fall back to their
decoder, which reports the file as unreadable). It raises nothing for a bad header: it exists so that a
20000 x 20000 PNG of 1.2 MB can be refused before a decoder allocates 1.2 GB for it.

Pure Python (no OpenCV, no TensorFlow): `anime_gan` imports it too, and data_prep stays at the bottom.
"""
from __future__ import annotations

import os
import struct

HEAD = 64 * 1024  # enough for every fixed header here; JPEG markers are streamed past it
_JPEG_SCAN_LIMIT = 16 * 1024 * 1024  # stop looking for the SOF marker after this many bytes
# Start-of-frame markers carry the size: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI (EOI ends the search).
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


class _Reader:
    """Reads from bytes or an open file, returning b'' past the end (never raises on short data)."""

    def __init__(self, data: bytes | None = None, f=None):
        self.data, self.f, self.pos = data, f, 0

    def read(self, n: int) -> bytes:
        if self.f is not None:
            return self.f.read(n)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> None:
        if self.f is not None:
            self.f.seek(n, os.SEEK_CUR)
        else:
            self.pos += n

    def tell(self) -> int:
        return self.f.tell() if self.f is not None else self.pos


def _png(h: bytes):
    # 8-byte signature, then the IHDR chunk: length(4) 'IHDR' width(4) height(4)
    if h[:8] == b"\x89PNG\r\n\x1a\n" and len(h) >= 24 and h[12:16] == b"IHDR":
        w, hh = struct.unpack(">II", h[16:24])
        return hh, w
    return None


def _gif(h: bytes):
    if h[:6] in (b"GIF87a", b"GIF89a") and len(h) >= 10:
        w, hh = struct.unpack("<HH", h[6:10])
        return hh, w
    return None


def _bmp(h: bytes):
    if h[:2] != b"BM" or len(h) < 26:  # file header (14) + header size (4) + width, height (8)
        return None
    header_size = struct.unpack("<I", h[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, hh = struct.unpack("<HH", h[18:22])
        return hh, w
    if header_size >= 40:
        w, hh = struct.unpack("<ii", h[18:26])
        return abs(hh), abs(w)  # negative height: rows stored top-down
    return None


def _webp(h: bytes):
    if h[:4] != b"RIFF" or h[8:12] != b"WEBP" or len(h) < 30:
        return None
    chunk = h[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag(3) start code 9d 01 2a, then 14-bit width, height
        if h[23:26] != b"\x9d\x01\x2a":
            return None
        w, hh = struct.unpack("<HH", h[26:30])
        return hh & 0x3FFF, w & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit width-1, 14-bit height-1
        if h[20] != 0x2F:
            return None
        b = int.from_bytes(h[21:25], "little")
        return ((b >> 14) & 0x3FFF) + 1, (b & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags(4), 24-bit canvas width-1, height-1
        w = int.from_bytes(h[24:27], "little") + 1
        hh = int.from_bytes(h[27:30], "little") + 1
        return hh, w
    return None


def _tiff(h: bytes, read_at):
    """Width and length tags of the first IFD, which may sit anywhere in the file (often at its end)."""
    if h[:4] == b"II*\x00":
        e = "<"
    elif h[:4] == b"MM\x00*":
        e = ">"
    else:
        return None
    off = struct.unpack(e + "I", h[4:8])[0]
    count = read_at(off, 2)
    if len(count) < 2:
        return None
    n = struct.unpack(e + "H", count)[0]
    entries = read_at(off + 2, 12 * n)
    size = {}
    for i in range(len(entries) // 12):
        tag, typ, _count = struct.unpack(e + "HHI", entries[12 * i:12 * i + 8])
        raw = entries[12 * i + 8:12 * i + 12]
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            size[tag] = struct.unpack(e + "H", raw[:2])[0] if typ == 3 else struct.unpack(e + "I", raw)[0]
    if 256 in size and 257 in size:
        return size[257], size[256]
    return None


def _jpeg(r: _Reader):
    """Walks the marker segments from just after SOI to the first SOF marker."""
    while r.tell() < _JPEG_SCAN_LIMIT:
        b = r.read(1)
        if not b:
            return None
        if b[0] != 0xFF:
            return None  # segments follow each other directly; anything else is corrupt
        m = r.read(1)
        while m == b"\xFF":  # fill bytes
            m = r.read(1)
        if not m:
            return None
        marker = m[0]
        if marker in _STANDALONE:
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image or start of scan before any frame
            return None
        ln = r.read(2)
        if len(ln) < 2:
            return None
        length = struct.unpack(">H", ln)[0]
        if length < 2:
            return None
        if marker in _SOF:
            seg = r.read(5)  # precision(1) height(2) width(2)
            if len(seg) < 5:
                return None
            hh, w = struct.unpack(">HH", seg[1:5])
            return hh, w
        r.skip(length - 2)
    return None


def _from(head: bytes, reader: _Reader, read_at):
    for parse in (_png, _gif, _bmp, _webp):
        size = parse(head)
        if size is not None:
            return size
    if head[:2] in (b"II", b"MM"):
        return _tiff(head, read_at)
    if head[:2] == b"\xff\xd8":
        reader.skip(2)
        return _jpeg(reader)
    return None


def image_size(source) -> tuple[int, int] | None:
    """(height, width) from the header of `source` (a path or the file's bytes), or None.

    None: not PNG/JPEG/BMP/GIF/WebP/TIFF, or the header is cut short or corrupt. A path that cannot
    be opened raises the usual OSError (the caller names the file); nothing else is raised.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        try:
            return _from(data[:HEAD], _Reader(data=data), lambda off, n: data[off:off + n])
        except (struct.error, IndexError, ValueError):
            return None
    with open(source, "rb") as f:
        head = f.read(HEAD)
        f.seek(0)

        def read_at(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)

        try:
            return _from(head, _Reader(f=f), read_at)
        except (struct.error, IndexError, ValueError, OSError, OverflowError):
            return None
