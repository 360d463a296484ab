"""Entry points for tests that need real, separate, killable processes.

Run as ``python -m tests.procs COMMAND ARGS…``; each prints one line per
acknowledged operation and flushes, so the parent knows exactly what was
acknowledged before it killed us.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ams.config import config_from_dict
from ams.store import NewMessage, Store


def _store(root: str, method: str, fsync: str, host: str = "h1", **extra: object) -> Store:
    return Store(config_from_dict({
        "store": {"root": root, "lock_method": method, "fsync": fsync, **extra},
        "host": {"name": host, "cache_dir": root + ".cache"}}))


def message(tag: str, size: int) -> bytes:
    head = f"Subject: {tag}\r\nMessage-ID: <{tag}@test>\r\n\r\n".encode()
    body = (tag.encode() + b" ") * (max(size - len(head), 0) // (len(tag) + 1) + 1)
    return head + body[: max(size - len(head), 0)]


def append(root: str, logdir: str, method: str, fsync: str, count: str, size: str, tag: str,
           segment: str = "67108864") -> None:
    st = _store(root, method, fsync, segment_bytes=int(segment))
    log = st.log_at(Path(logdir))
    out = sys.stdout
    for i in range(int(count)):
        t = f"{tag}-{i}"
        (a,) = log.append([NewMessage(message(t, int(size)), internal_date=int(time.time()),
                                      delivery_id=t)])
        out.write(f"{a.uid} {t}\n")
        out.flush()


def main() -> None:
    cmd, *args = sys.argv[1:]
    {"append": append}[cmd](*args)


if __name__ == "__main__":
    main()
