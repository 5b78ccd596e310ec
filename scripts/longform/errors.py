"""The long-form client's typed errors; the command line maps them to exit codes."""

from __future__ import annotations


class LongFormError(Exception):
    """Base of everything the long-form client raises on purpose."""

    exit_code = 1


class UsageError(LongFormError):
    """Bad arguments or an unreadable input file: nothing was sent."""

    exit_code = 2


class PartFailed(LongFormError):
    """One part's job failed; `retriable` says whether sending it again could help."""

    def __init__(self, key: str, message: str, *, retriable: bool) -> None:
        super().__init__(f"part {key}: {message}")
        self.key = key
        self.retriable = retriable


class RunFailed(LongFormError):
    """Parts failed after every retry; the manifest keeps the ones that were done."""


class Cancelled(LongFormError):
    """Ctrl-C: the parts in flight were cancelled; a rerun resumes."""

    exit_code = 130


class AssemblyError(LongFormError):
    """The parts can't be joined into one track (e.g. they came back at different sample rates)."""
