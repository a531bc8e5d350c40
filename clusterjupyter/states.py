"""The one job-state enum every backend maps onto."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """Where a job is. Scheduler-native states map onto these through each scheduler's table."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)

    @property
    def ok(self) -> bool:
        return self is JobState.COMPLETED

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "JobState":
        try:
            return cls(text.strip().lower())
        except ValueError:
            valid = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown job state {text!r}; valid states: {valid}") from None
