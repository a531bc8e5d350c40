"""Transports: how commands and files reach the machine where jobs run."""

from .base import Completed, Progress, Transport
from .local import LocalTransport

__all__ = ["Completed", "LocalTransport", "Progress", "Transport"]
