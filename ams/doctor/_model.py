"""What a doctor run produces: check results, the verdict and the report.

Plain data, no I/O.  A :class:`Check` is one line of the report; its
``rules_out`` names the lock methods a failure of that check makes unsafe,
which is all :func:`ams.doctor._verdict.decide` needs to reach a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "skipped"]
VerdictName = Literal["safe", "unsafe", "incomplete"]

FCNTL = "fcntl"
DOTLOCK = "dotlock"
BOTH = (FCNTL, DOTLOCK)

#: Checks every host runs on its own, in report order.
SINGLE_HOST_CHECKS = ("fsync", "excl_local", "fcntl_local", "mtime_granularity", "clock_fs")

#: Visibility kinds, each measured as ``vis_<kind>``.
VIS_KINDS = ("new_file", "new_name_listed", "append_reopen", "append_fstat", "overwrite",
             "rename_over", "unlink")

#: Checks that need at least two hosts, in the order they run.
CROSS_HOST_CHECKS = (
    "clock_peers",
    *(f"vis_{k}" for k in VIS_KINDS),
    "rename_race", "excl_race", "mkdir_race",
    "fcntl_exclusion", "fcntl_counter", "dotlock_counter",
    "log_append_fcntl", "log_append_dotlock",
    "o_append",
)

ALL_CHECKS = SINGLE_HOST_CHECKS + CROSS_HOST_CHECKS


@dataclass(frozen=True)
class Check:
    """One check's outcome, as every participating host reports it."""

    name: str
    status: Status
    detail: str
    #: Lock methods this check's failure makes unsafe (empty unless failed).
    rules_out: tuple[str, ...] = ()
    #: Measured figures (milliseconds, counts, per-host values).
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail,
                               "rules_out": list(self.rules_out)}
        for k, v in self.figures.items():
            out.setdefault(k, v)
        return out


def skipped(name: str, why: str) -> Check:
    return Check(name, "skipped", why)


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictName
    #: The recommended method, or None when neither is safe.
    lock_method: str | None
    #: Every method no failed check ruled out.
    methods_ok: tuple[str, ...]
    #: Recommended ``[store]`` settings.
    settings: dict[str, Any]
    #: "cross-host" when peers took part, else "single-host".
    scope: str
    #: One line per reason the verdict is what it is.
    reasons: tuple[str, ...] = ()


@dataclass
class Report:
    verdict: Verdict
    checks: list[Check]
    peers: list[dict[str, Any]]
    root: str
    run: str
    filesystem: dict[str, str] = field(default_factory=dict)
    #: Set for an incomplete run: why it stopped.
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        out: dict[str, Any] = {
            "verdict": v.verdict, "lock_method": v.lock_method, "methods_ok": list(v.methods_ok),
            "settings": v.settings, "scope": v.scope, "reasons": list(v.reasons),
            "checks": [c.to_json() for c in self.checks], "peers": self.peers,
            "root": self.root, "run": self.run, "filesystem": self.filesystem,
        }
        if self.error:
            out["error"] = self.error
        return out

    @property
    def exit_code(self) -> int:
        return {"safe": 0, "unsafe": 1, "incomplete": 3}[self.verdict.verdict]
