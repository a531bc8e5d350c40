"""Transports: how commands and files reach the machine where jobs run."""

from .base import Completed, NotRegularFile, Progress, Transport
from .local import LocalTransport

__all__ = ["Completed", "LocalTransport", "NotRegularFile", "Progress", "Transport"]
