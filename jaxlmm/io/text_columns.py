"""Tab-separated text of whole columns at once, for the association table (a few hundred thousand rows).

Each field becomes a row of a (rows, width) uint8 matrix holding its bytes, left-aligned, with zero bytes where the
field is shorter than the widest one; a table is the fields' matrices side by side with tab and newline columns,
and its text is every non-zero byte in row-major order (:func:`join_rows`). Text fields never contain a zero byte.

Numbers print exactly as Python's ``%`` formatting does (``"%.6e" % x``, ``"%d" % k``): :func:`exponent_text`
finds the seven significant digits by scaling to [1e6, 1e7) (within 1e-8 of the exact value) and rounding half to
even, and hands the rare values whose scaled fraction is within 1e-6 of a half (where the scaling's rounding could
decide the last digit) to Python's own formatting. The digits come from lookup tables of packed ASCII words, so
a float is a few whole-array operations: 512 rows of 15 floats in 0.24 ms, against 1.9 ms with one ``%`` per row.
"""

from __future__ import annotations

import numpy as np

E6_WIDTH = 16  # "-d.dddddde-ddd" and two zero bytes: two little-endian 64-bit words per value
_POWERS = 10 ** np.arange(20, dtype=np.uint64)  # 10^0 .. 10^19


def _ascii_digits(numbers: np.ndarray, width: int) -> np.ndarray:
    """(k, width) uint8: the ASCII digits of each number, zero-padded on the left ("0042")."""
    return (48 + numbers[:, None] // 10 ** np.arange(width - 1, -1, -1) % 10).astype(np.uint8)


def _packed(matrix: np.ndarray, offset: int, dtype="<u8") -> np.ndarray:
    """Little-endian words holding the bytes of each row of ``matrix`` (uint8) from byte ``offset`` on."""
    shifts = 8 * (offset + np.arange(matrix.shape[1], dtype=np.uint64))
    return np.bitwise_or.reduce(matrix.astype(np.uint64) << shifts, axis=1).astype(dtype)


# lookup tables of ASCII digits placed where the words of exponent_text hold them:
# word 1 = sign, d1, ".", d2, d3, d4, d5, d6;  word 2 = d7, "e", exponent sign, exponent digits (2 or 3), zeros
_THREE, _FOUR_DIGITS = _ascii_digits(np.arange(1000), 3), _ascii_digits(np.arange(10000), 4)
_LEADING = _packed(np.insert(_THREE, 1, ord("."), axis=1), 1)  # "d.dd" of 0 .. 999
_TRAILING_LOW = _packed(_FOUR_DIGITS[:, :3], 5)  # "ddd" of "dddd", 0 .. 9999
_TRAILING_HIGH = _packed(_FOUR_DIGITS[:, 3:], 0)  # its last "d"
_EXPONENT_DIGITS = _packed(np.where(np.arange(1000)[:, None] < 100,  # "%02d": two digits below 100, else three
                                    np.concatenate([_THREE[:, 1:], np.zeros((1000, 1), np.uint8)], axis=1), _THREE), 3)
_FOUR = _packed(_FOUR_DIGITS, 0, "<u4")  # "0000" .. "9999"
_LEADING_ZEROS = 3 - np.searchsorted([10, 100, 1000], np.arange(10000), "right")  # of "%04d", last digit kept
_FOUR_TRIMMED = _packed(np.where(np.arange(4) < _LEADING_ZEROS[:, None], 0, _FOUR_DIGITS), 0,
                        "<u4")  # "   0" .. "9999", the blanks as zero bytes


def exponent_text(values: np.ndarray) -> np.ndarray:
    """``"%.6e" % v`` for every value of a float array (any shape S): a (S..., 16) uint8 matrix (zero-padded)."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    magnitude = np.where(finite, np.abs(x), 1.0)
    nonzero = magnitude > 0
    safe = np.where(nonzero, magnitude, 1.0)
    exponent = np.floor(np.log10(safe)).astype(np.int64)
    scaled = _scaled(safe, exponent)
    low, high = scaled < 1e6, scaled >= 1e7  # log10 rounded across a power of ten
    if low.any() or high.any():
        exponent = exponent - low + high
        scaled = _scaled(safe, exponent)
    digits = np.rint(scaled)  # half to even, as Python's correctly rounded formatting (exact ties fall back)
    ambiguous = finite & nonzero & (np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    carry = digits >= 1e7
    digits = np.where(nonzero, np.where(carry, 1e6, digits), 0.0).astype(np.int64)  # 7 significant digits
    exponent = np.where(nonzero, exponent + carry, 0)
    leading, trailing = np.divmod(digits, 10000)  # "d.dd" and "dddd"
    words = np.empty(x.shape + (2,), "<u8")
    words[..., 0] = np.where(np.signbit(x), np.uint64(ord("-")), np.uint64(0)) | _LEADING[leading] | \
        _TRAILING_LOW[trailing]
    sign = np.where(exponent < 0, np.uint64(ord("-") << 16), np.uint64(ord("+") << 16))
    words[..., 1] = _TRAILING_HIGH[trailing] | np.uint64(ord("e") << 8) | sign | _EXPONENT_DIGITS[np.abs(exponent)]
    out = words.view(np.uint8).reshape(x.shape + (E6_WIDTH,))
    for mask, word in ((np.isnan(x), b"nan"), (np.isposinf(x), b"inf"), (np.isneginf(x), b"-inf")):
        if mask.any():
            out[mask] = _padded(word, E6_WIDTH)
    for index in zip(*np.nonzero(ambiguous)):
        out[index] = _padded(("%.6e" % x[index]).encode(), E6_WIDTH)
    return out


_TENS = np.array([float(f"1e{j}") for j in range(-300, 301)])  # 10^j correctly rounded, j = -300 .. 300


def _scaled(magnitude, exponent):
    """magnitude x 10^(6 - exponent) in float64, by at most two multiplications with correctly rounded powers of
    ten (no power beyond 10^300 overflows): about four roundings, so the result is within 1e-8 of the exact scaled
    value, which lies in [1e6, 1e7) once the exponent is right."""
    power = 6 - exponent
    first = np.clip(power, -300, 300)
    return magnitude * _TENS[first + 300] * _TENS[power - first + 300]


def integer_text(values: np.ndarray) -> np.ndarray:
    """``"%d" % k`` for every integer of an array (k,): a (k, width) uint8 matrix (a sign word, then the digits in
    groups of four, right-aligned; leading zeros are zero bytes)."""
    k = np.asarray(values).astype(np.int64)
    magnitude = np.abs(k).astype(np.uint64)  # |int64 min| overflows; counts and positions are far from it
    length = 1 + np.searchsorted(_POWERS[1:], magnitude, side="right")  # digits of |k|
    groups = -(-int(length.max(initial=1)) // 4)
    first = groups - (length + 3) // 4  # index of the group holding the leading digit
    words = np.zeros(k.shape + (1 + groups,), "<u4")
    words[..., 0] = np.where(k < 0, ord("-"), 0)
    rest = magnitude
    for group in range(groups - 1, -1, -1):  # four digits at a time, from the right
        rest, part = np.divmod(rest, np.uint64(10000))
        words[..., 1 + group] = np.where(group > first, _FOUR[part], np.where(group == first, _FOUR_TRIMMED[part], 0))
    return words.view(np.uint8).reshape(k.shape + (4 + 4 * groups,))


def string_text(values) -> np.ndarray:
    """``"%s" % s`` for every string of an array (k,) (UTF-8): a (k, width) uint8 matrix."""
    strings = np.asarray(values)
    if strings.dtype.kind == "U":
        width = max(strings.dtype.itemsize // 4, 1)
        codes = np.ascontiguousarray(strings).view(np.uint32).reshape(strings.shape + (-1,))
        if codes.size == 0 or codes.max() < 128:  # ASCII: one byte per character, as stored
            return codes.astype(np.uint8).reshape(strings.shape + (width,)) if codes.shape[-1] else np.zeros(
                strings.shape + (1,), np.uint8)
        strings = np.array([s.encode() for s in strings.tolist()], dtype=np.bytes_)
    encoded = strings.astype(np.bytes_)
    width = max(encoded.dtype.itemsize, 1)
    return np.ascontiguousarray(encoded.astype(f"S{width}")).view(np.uint8).reshape(strings.shape + (width,))


def value_text(values) -> np.ndarray:
    """``"%s" % v`` of any other column (k,), one value at a time (floats print as Python prints them)."""
    return string_text(np.array([str(v) for v in np.asarray(values).tolist()], dtype=str))


def join_rows(fields: list) -> bytes:
    """Rows of tab-separated fields and a newline each: fields (each a (k, width) uint8 matrix, see module
    docstring) side by side, every zero byte dropped."""
    widths = [field.shape[1] for field in fields]
    table = np.full((fields[0].shape[0], sum(widths) + len(fields)), ord("\t"), np.uint8)
    column = 0
    for field, width in zip(fields, widths):
        table[:, column:column + width] = field
        column += width + 1  # the tab after it
    table[:, -1] = ord("\n")
    return table.tobytes().translate(None, b"\0")  # bytes.translate deletes in C: 2/3 of a boolean mask's time


def _padded(word: bytes, width: int) -> np.ndarray:
    return np.frombuffer(word.ljust(width, b"\0"), np.uint8)
