"""The verdicts doctor leaves behind, and the start-up guard that reads them.

Each host that took part in a complete run writes what it concluded to
``<root>/doctor/verdicts/<host>.json`` (staging, rename), with the
filesystem the root was on *as that host mounts it*: a host's client
options are part of what was measured, so a verdict is only ever applied to
the host that measured it and to the same mount.

:func:`startup_check` is what a role calls before it touches the store.  It
reads ``/proc/self/mountinfo`` and one small file, so it costs a
millisecond or two (it cannot hang unless the store itself does), and it
refuses to start when

1. this host's verdict says the filesystem is unsafe;
2. the configured ``store.lock_method`` is one the verdict ruled out
   (``fcntl`` where locks do not exclude across hosts);
3. with ``require_verdict`` (the default), the store is on a network,
   cluster or FUSE filesystem and this host has no cross-host verdict for
   the mount it has now: incoherent client caches (GlusterFS's defaults,
   for one) cannot be seen from one host, only measured by two.

Settings below the verdict's recommendation (``clock_skew``,
``lease_seconds``) are returned as warnings, not refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.config import Config
from ams.doctor._model import Report
from ams.errors import StoreError
from ams.index._fstype import mount_holding, shared_fs_reason
from ams.store import _fs

VERDICT_FORMAT = 1


class UnsafeFilesystem(StoreError):
    """The store's filesystem is known (or not known not) to lose data here."""


def verdict_path(root: Path, host: str) -> Path:
    return Path(root) / "doctor" / "verdicts" / f"{host}.json"


def fs_identity(path: Path) -> dict[str, str]:
    """The mount holding ``path``: mountpoint, fstype, source ({} if unknown)."""
    m = mount_holding(path)
    if m is None:
        return {}
    return {"mountpoint": m.mountpoint, "fstype": m.fstype, "source": m.source}


def write_verdict(root: Path, host: str, report: Report, identity: dict[str, str]) -> Path:
    v = report.verdict
    path = verdict_path(root, host)
    _fs.makedirs(path.parent, sync=False)
    _fs.write_file_atomic(path, _fs.dump_json({
        "format": VERDICT_FORMAT, "host": host, "time": time.time(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "run": report.run,
        "verdict": v.verdict, "scope": v.scope, "lock_method": v.lock_method,
        "methods_ok": list(v.methods_ok), "settings": v.settings,
        "reasons": list(v.reasons), "filesystem": identity,
        "peers": [p.get("host") for p in report.peers],
    }))
    return path


def read_verdict(root: Path, host: str) -> dict[str, Any] | None:
    try:
        with open(verdict_path(root, host), "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == VERDICT_FORMAT else None


@dataclass(frozen=True)
class StartupCheck:
    """What :func:`startup_check` found when it let a role start."""

    #: The verdict applied (None: none needed or none found).
    verdict: dict[str, Any] | None
    filesystem: dict[str, str]
    warnings: tuple[str, ...] = ()


def startup_check(store: Any, *, require_verdict: bool = True) -> StartupCheck:
    """Refuse (UnsafeFilesystem) a store this host must not use; see the module doc.

    ``store`` is an :class:`ams.store.Store` or a :class:`ams.config.Config`.
    """
    config: Config = store if isinstance(store, Config) else store.config
    root, host = Path(config.store.root), config.host.name
    ident = fs_identity(root)
    fstype = ident.get("fstype", "")
    shared = shared_fs_reason(fstype) if fstype else None
    warnings: list[str] = []
    v = read_verdict(root, host)
    if v is not None and v.get("filesystem") != ident:
        warnings.append(f"ams doctor's verdict for {host} ({v.get('date')}) was for "
                        f"{_where(v.get('filesystem') or {})}, the store is now on "
                        f"{_where(ident)}: run ams doctor again")
        v = None
    if v is not None:
        when = f"ams doctor ({v.get('date')}, run {v.get('run')})"
        reasons = list(v.get("reasons") or [])
        first = reasons[0] if reasons else "see its report"
        if v.get("verdict") == "unsafe":
            raise UnsafeFilesystem(
                f"{when} found the filesystem under {root} unsafe for AMS ({first}); "
                "fix the filesystem's options and run ams doctor again")
        method = config.store.lock_method
        if method not in (v.get("methods_ok") or []):
            raise UnsafeFilesystem(
                f"store.lock_method = \"{method}\" is unsafe on this filesystem: {when} "
                f"found {first}; set lock_method = \"{v.get('lock_method')}\" on every host")
        if v.get("scope") != "cross-host" and shared and require_verdict:
            raise UnsafeFilesystem(
                f"{root} is on {shared} ({fstype}) but ams doctor ran on this host alone: "
                "run it on two hosts at once (--peers 1)")
        rec = v.get("settings") or {}
        for key in ("clock_skew", "lease_seconds"):
            want, have = rec.get(key), getattr(config.store, key)
            if isinstance(want, (int, float)) and have < want:
                warnings.append(f"store.{key} = {have:g} is below the {want:g} {when} "
                                "recommends")
        return StartupCheck(v, ident, tuple(warnings))
    if shared and require_verdict:
        raise UnsafeFilesystem(
            f"{root} is on {shared} ({fstype}) and no ams doctor verdict for host "
            f"{host} is there: run 'ams doctor' on two hosts at once first, so that "
            "incoherent client caches are caught before they lose mail")
    return StartupCheck(None, ident, tuple(warnings))


def _where(ident: dict[str, str]) -> str:
    if not ident:
        return "an unknown filesystem"
    return f"{ident.get('fstype')} {ident.get('source')} at {ident.get('mountpoint')}"
