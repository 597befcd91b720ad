"""Hand-built PNGs of 20000 x 20000 pixels for the tests that refuse huge images from their header.

`header_only_png`: the signature and an IHDR chunk, no pixel data (a decoder fails on it, so a
refusal that names the size can only come from the header). `black_png`: a complete, valid RGB PNG
whose pixels are all black, 1.2 MB on disk and 1.2 GB decoded: what a user might really send.
"""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(height, width):
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB


def header_only_png(height=20000, width=20000):
    return SIGNATURE + _ihdr(height, width) + _chunk(b"IEND", b"")


def black_png(height=20000, width=20000, rows_per_block=500):
    """A valid all-black RGB PNG, built in well under a second.

    Each row is a filter byte and 3 * width zero bytes. The zlib stream is one compressed block of
    `rows_per_block` rows repeated: after a full flush zlib starts afresh, so the same input gives
    the same bytes each time and is compressed only twice (the first copy carries the zlib header).
    The Adler-32 of n zero bytes is (n mod 65521) << 16 | 1 (its sum a stays 1, b adds a per byte).
    """
    assert height % rows_per_block == 0
    block = bytes((1 + 3 * width) * rows_per_block)
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.flush(zlib.Z_FINISH)[:-4]  # the final empty block, without the wrong checksum
    n = (1 + 3 * width) * height
    adler = (n % 65521) << 16 | 1
    stream = first + repeat * (height // rows_per_block - 1) + last + struct.pack(">I", adler)
    return SIGNATURE + _ihdr(height, width) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
