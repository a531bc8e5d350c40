"""The two ways an SSH operation fails inside the package: a lost connection or a fatal one."""

from __future__ import annotations

from ...errors import TransportError


class Lost(Exception):
    """The connection broke. ``sent``: the operation may already have reached the server."""

    def __init__(self, cause: BaseException | str, sent: bool = True):
        self.cause = cause
        self.sent = sent
        super().__init__(str(cause) or type(cause).__name__)


class Fatal(TransportError):
    """A connection problem retrying cannot fix (host key, authentication)."""

