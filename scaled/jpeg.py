"""The frame header of a JPEG file: its size and number of colour components, read from the
bytes without decoding (the CPU stage's check before `torchvision.io.decode_jpeg`).

PIL's `Image.open` reads the same three numbers, but its marker parser is Python that builds
an image object: about 20 us alone and several times that between decodes (measured by `bench
loader`'s profile), some 5% of the CPU stage's time per image. This reads only the markers up
to the frame header (ITU-T T.81, B.2.2), and hands every file it is not sure of back to PIL.
"""

from __future__ import annotations

from typing import NamedTuple

# Start-of-frame markers (T.81 Table B.1): baseline, extended, progressive and lossless, Huffman
# or arithmetic coded; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) in that range are not frames.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field


class Frame(NamedTuple):
    height: int
    width: int
    components: int  # 1 grey, 3 YCbCr or RGB, 4 CMYK or YCCK (PIL's "L", "RGB", "CMYK")
    precision: int  # bits per sample


def jpeg_frame(data: bytes) -> Frame | None:
    """The frame header of the JPEG in `data`, or None when `data` is not a JPEG or its
    markers end (or turn odd) before a frame header: the caller then asks PIL."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker in STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame
            return None
        if marker in SOF_MARKERS:
            if pos + 10 > end:
                return None
            precision, components = data[pos + 4], data[pos + 9]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return Frame(height, width, components, precision)
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None
