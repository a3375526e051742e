"""A bit reader for the codec headers (H.264 SPS, AAC AudioSpecificConfig) over untrusted bytes.

Reading past the end raises :class:`MalformedMedia`; Exp-Golomb codes longer
than 32 bits are refused, so no input makes a read loop long.
"""

from shopcast.codecs._errors import MalformedMedia


class BitReader:
    """Reads big-endian bit fields from a byte string, most significant bit first."""

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._size_bits = len(data) * 8
        self._pos_bits = 0
        self.what = what

    @property
    def remaining_bits(self) -> int:
        return self._size_bits - self._pos_bits

    def bits(self, count: int) -> int:
        """The next ``count`` bits as an unsigned integer."""
        if count > self.remaining_bits:
            raise MalformedMedia(self.what, "ends in the middle of a field")
        self._pos_bits += count
        return (self._value >> (self._size_bits - self._pos_bits)) & ((1 << count) - 1)

    def flag(self) -> bool:
        return self.bits(1) == 1

    def ue(self) -> int:
        """An unsigned Exp-Golomb code, ue(v) of H.264 section 9.1."""
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise MalformedMedia(self.what, "Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """A signed Exp-Golomb code, se(v)."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)
