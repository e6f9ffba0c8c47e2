"""The runtime's errors: one base class, and one subclass per kind of problem a caller (or an HTTP handler) maps.

Every message names the field, file or person involved, so a server can return it to the client as is.
"""
from __future__ import annotations

from formats.errors import AdapterFileError, ManifestError


class RuntimeErrorBase(Exception):
    """Base of every error the runtime raises on purpose."""


class UnknownPerson(RuntimeErrorBase):
    """The person is not servable by this runtime (no adapter file of that name, or not the merged person)."""

    def __init__(self, person: str | None, message: str):
        super().__init__(message)
        self.person = person


class InvalidRequest(RuntimeErrorBase):
    """A request field is out of range or malformed; `field` names it and the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


class BudgetExceeded(RuntimeErrorBase):
    """The latency budget cannot be (before_running=True) or was not (False) met.

    `estimate_ms` is the estimate that refused the call (elapsed so far + the running estimate of the stages
    still to run), `elapsed_ms` the time actually spent, `result` the finished result(s) when the budget was
    exceeded after running (the tri-planes are cached either way).
    """

    def __init__(self, message: str, budget_ms: float, estimate_ms: float | None, elapsed_ms: float,
                 before_running: bool, result=None):
        super().__init__(message)
        self.budget_ms, self.estimate_ms, self.elapsed_ms = budget_ms, estimate_ms, elapsed_ms
        self.before_running, self.result = before_running, result


class AdapterInvalid(RuntimeErrorBase, AdapterFileError):
    """An adapter file that is corrupt or does not fit this export; `path` names the file, `reason` says why."""

    @classmethod
    def of(cls, e: AdapterFileError) -> "AdapterInvalid":
        """The runtime's form of a formats.adapter_file error."""
        return cls(e.path, e.reason)


class ExportInvalid(RuntimeErrorBase, ManifestError):
    """An export directory that cannot be served (missing or altered files, unknown manifest): `path`, `reason`."""

    @classmethod
    def of(cls, e: ManifestError) -> "ExportInvalid":
        """The runtime's form of a formats.export_manifest error."""
        return cls(e.path, e.reason)
