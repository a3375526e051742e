"""The one exception every parser of untrusted media bytes raises."""


class MalformedMedia(ValueError):
    """Bytes from the network that are not valid media (the remote peer's fault).

    Raised by every ``*_untrusted`` function and by every parser in a module that
    says it parses untrusted input. ``what`` names the structure being parsed, so
    a caller can close a stream or session with a reason that points at it.
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"malformed {what}: {reason}")
        self.what = what
        self.reason = reason


class UnsupportedMedia(MalformedMedia):
    """Well-formed media in a format shopcast does not handle (e.g. HEVC over RTMP).

    A subclass of :class:`MalformedMedia` so one ``except`` covers both, while the
    message says the format is recognised but refused.
    """
