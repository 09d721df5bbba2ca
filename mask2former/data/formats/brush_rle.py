"""Label Studio's brush RLE: the bit-packed run-length code its brush regions are stored in (`"format": "rle"`).

The code packs a flat array of words (Label Studio: the H x W x 4 RGBA bytes of the brush layer, row by row) into
bytes read most significant bit first:

    header   32 bits  number of words
              5 bits  word size - 1 (8 for Label Studio)
          4 x 4 bits  the four run-length field sizes - 1 (Label Studio: 3, 4, 8, 16 bits)
    chunks until the words are complete, each
              1 bit   1: a repeat (one word, repeated), 0: a literal (that many words follow)
              2 bits  which run-length field size the length uses
              n bits  the chunk's length - 1
              then one word (repeat) or length words (literal)

A brush region's pixels are those whose alpha (the fourth byte) is at least `ALPHA_THRESHOLD`. The decoder reads
chunk headers one by one and literal words in one numpy step; the encoder works in numpy steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RUN_FIELD_SIZES = (3, 4, 8, 16)  # Label Studio's (and the rle-pack library's) default field sizes
WORD_SIZE = 8
ALPHA_THRESHOLD = 128  # a brush pixel is in the region when its alpha is at least this
_HEADER_BITS = 32 + 5 + 4 * 4


class BrushRleError(ValueError):
    """Bytes that are not a brush RLE (truncated, overlong, or of another word count); the message says which."""


class _Bits:
    """Reads fields of up to 32 bits at any bit position of a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data + bytes(5)
        self.size = len(data) * 8
        self.position = 0

    def read(self, count: int) -> int:
        end = self.position + count
        if end > self.size:
            raise BrushRleError(f"the code ends in the middle of a field (bit {self.position} of {self.size})")
        start = self.position >> 3
        window = int.from_bytes(self.data[start : start + 5], "big")
        value = (window >> (40 - (self.position & 7) - count)) & ((1 << count) - 1)
        self.position = end
        return value

    def read_words(self, count: int, word_size: int, bits: np.ndarray) -> np.ndarray:
        end = self.position + count * word_size
        if end > self.size:
            raise BrushRleError(f"a literal run of {count} words passes the end of the code (bit {self.size})")
        chunk = bits[self.position : end].reshape(count, word_size).astype(np.uint32)
        self.position = end
        return chunk @ (1 << np.arange(word_size - 1, -1, -1, dtype=np.uint32))


def decode_brush_rle(code: bytes | Sequence[int], expected_words: int | None = None) -> np.ndarray:
    """The flat uint8 words of a brush RLE (bytes, or Label Studio's json list of byte values); BrushRleError for
    a code that is truncated, runs past its word count, has words wider than 8 bits, or whose word count is not
    `expected_words` (when given)."""
    if not isinstance(code, bytes):
        values = list(code)
        if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255 for v in values):
            raise BrushRleError("the code is not a list of byte values (integers 0..255)")
        code = bytes(values)
    if len(code) * 8 < _HEADER_BITS:
        raise BrushRleError(f"{len(code)} bytes are too few for the code's header")
    stream = _Bits(code)
    total = stream.read(32)
    word_size = stream.read(5) + 1
    field_sizes = [stream.read(4) + 1 for _ in range(4)]
    if word_size > 8:
        raise BrushRleError(f"words of {word_size} bits; a brush layer has 8-bit words")
    if expected_words is not None and total != expected_words:
        raise BrushRleError(f"the code holds {total} words, the image needs {expected_words} (width x height x 4)")
    if total > len(code) * 8 * (1 << 16):  # no chunk header of a few bits can stand for more
        raise BrushRleError(f"the header claims {total} words, more than {len(code)} bytes can hold")
    bits = np.unpackbits(np.frombuffer(code, dtype=np.uint8))
    out = np.zeros(total, dtype=np.uint8)
    done = 0
    while done < total:
        repeat = stream.read(1)
        length = stream.read(field_sizes[stream.read(2)]) + 1
        if done + length > total:
            raise BrushRleError(f"a run of {length} words at word {done} passes the word count {total}")
        if repeat:
            out[done : done + length] = stream.read(word_size)
        elif length * word_size <= 32:  # a short literal: one field, split here (numpy's overhead would dominate)
            packed = stream.read(length * word_size)
            for index in range(length):
                out[done + index] = (packed >> (word_size * (length - 1 - index))) & ((1 << word_size) - 1)
        else:
            out[done : done + length] = stream.read_words(length, word_size, bits)
        done += length
    return out


def brush_mask(code: bytes | Sequence[int], height: int, width: int) -> np.ndarray:
    """The boolean H x W mask of a Label Studio brush region (alpha at least ALPHA_THRESHOLD)."""
    words = decode_brush_rle(code, expected_words=height * width * 4)
    return words.reshape(height, width, 4)[:, :, 3] >= ALPHA_THRESHOLD


def encode_brush_rle(words: np.ndarray) -> bytes:
    """The brush RLE of flat uint8 words, with Label Studio's field sizes: runs of two or more equal words as
    repeats, the words between them as literals (each chunk at most 2**16 words)."""
    words = np.ascontiguousarray(words, dtype=np.uint8).ravel()
    header_values = np.array([words.size, WORD_SIZE - 1, *[s - 1 for s in RUN_FIELD_SIZES]], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    if not words.size:
        return _pack(header_values, header_widths)
    repeat, start, count = _chunks(words)
    kind = np.searchsorted(1 << np.array(RUN_FIELD_SIZES), count - 1, side="right")  # smallest field holding it
    size = np.array(RUN_FIELD_SIZES)[kind]
    fields = 3 + np.where(repeat, 1, count)  # flag, field kind, length - 1, then the word(s)
    first = np.cumsum(fields) - fields
    total = int(fields.sum())
    values, widths = np.zeros(total, dtype=np.int64), np.full(total, WORD_SIZE, dtype=np.int64)
    values[first], widths[first] = repeat, 1
    values[first + 1], widths[first + 1] = kind, 2
    values[first + 2], widths[first + 2] = count - 1, size
    payload_count = np.where(repeat, 1, count)
    within = np.arange(int(payload_count.sum())) - np.repeat(np.cumsum(payload_count) - payload_count, payload_count)
    values[np.repeat(first + 3, payload_count) + within] = words[np.repeat(start, payload_count) + within]
    return _pack(np.r_[header_values, values], np.r_[header_widths, widths])


def _chunks(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is a repeat, first word, word count) of each chunk: runs of 2+ equal words are repeats, the single words
    between them literals, each split into chunks of at most 2**16 words."""
    run_start = np.flatnonzero(np.r_[True, words[1:] != words[:-1]])
    run_length = np.diff(np.r_[run_start, words.size])
    repeat = run_length >= 2
    group = np.cumsum(np.r_[True, repeat[1:] | repeat[:-1]])  # each repeat alone; consecutive singles together
    first_of_group = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    start = run_start[first_of_group]
    count = np.add.reduceat(run_length, first_of_group)
    repeat = repeat[first_of_group]
    longest = 1 << RUN_FIELD_SIZES[-1]
    pieces = -(-count // longest)  # chunks longer than a length field holds are split
    offset = (np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * longest
    start, count, repeat = (
        np.repeat(start, pieces) + offset,
        np.repeat(count, pieces) - offset,
        np.repeat(repeat, pieces),
    )
    return repeat, start, np.minimum(count, longest)


def _pack(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Fields of the given bit widths, most significant bit first, as bytes (the last byte padded with zeros)."""
    total = int(widths.sum())
    owner = np.repeat(np.arange(values.size), widths)
    starts = np.cumsum(widths) - widths
    offset = np.arange(total) - starts[owner]
    bits = (values[owner] >> (widths[owner] - 1 - offset)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes()
