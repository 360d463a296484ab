"""A small model of the original AMS message store: scenario C's writers and readers.

What it models (from the AUIS sources, ``ams/libs/ms/``: ``ms.h``,
``rawdb.c``, ``apndfile.c``): a folder is a directory holding one file per
message, ``+<id>`` (19-character ids), and the folder index ``.MS_MsgDir``:
a header of 1,172 bytes (``AMS_DIRHEADSIZE``: 1,024 bytes of prefix,
version, attribute names and date, plus one snapshot's worth of padding)
followed by one fixed 148-byte *snapshot* per message (``AMS_SNAPSHOTSIZE``:
date, caption, chain, message-id and reply hashes, attributes, id), in date
order.

Filing one message into a folder (``python -m benchmarks.churn.classic
write``), as the message server did with the folder open in ``MD_APPEND``
mode:

1. take the folder's lock (the original ``flock``\\ s ``.MS_MsgDir``; AFS
   keeps whole-file locks on the fileserver, so a lock changes no
   directory: here it is an ``flock`` on a file outside the measured
   mounts, shared by the writers of one machine);
2. open ``.MS_MsgDir`` read-write;
3. create the in-progress mark ``.AMS_DIRMOD`` in the folder
   (``MarkInProgress``);
4. write the message as ``+<id>`` with ``O_CREAT|O_EXCL`` (``WritePureFile``);
5. read the header, append the new snapshot at the end and rewrite the
   header (``DestructivelyWriteDirectoryHead``); close (AFS stores the
   file at close);
6. remove ``.AMS_DIRMOD`` (``UnmarkInProgress``) and unlock.

Per message that is three entries changed in the folder's directory and one
store of the index.  Not modelled, each of which would only add churn: the
``~/Mailbox`` drop directory that mail passed through before a user's
message server filed it; the master update file and its hint files; fsync
(the original did none: AFS stores at close).

A reader (``python -m benchmarks.churn.classic read``) is a client with
folders open, checking them every ``--interval`` seconds as
``CheckOpenMSDirectory`` does: ``stat`` of ``.MS_MsgDir`` (a lookup in the
folder's directory); when its mtime or size moved, reopen it and read the
header and the new snapshots.  It reads no message bodies, like the IDLE
clients of the other scenarios.  Its status file has the same form as
:mod:`benchmarks.churn.idle`'s.

Writers read jobs ``USER\\n`` on stdin and file one message for USER each;
they print ``filed N`` after every job.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

HEADER_SIZE = 1024 + 148
SNAPSHOT_SIZE = 148
INDEX = ".MS_MsgDir"
MARK = ".AMS_DIRMOD"
PREFIX = (b"\003\004\033\277BINARY FILE -- DO NOT EDIT!!!  \n`The mail transport mechanism "
          b"is trivial.' --Jim Morris\n\n\003\033\277")


def folder(root: Path, user: str) -> Path:
    """A user's mail folder under the store root."""
    return root / "classic" / user / "mail"


def header(count: int) -> bytes:
    head = PREFIX + b"%10d%10d%10d" % (4, 0, int(time.time())) + b"\0" * 5
    head += f"{count:010d}".encode()
    return head.ljust(HEADER_SIZE, b"\0")


def message_id(tag: str, n: int) -> str:
    """A 19-character id, unique per writer (``tag``) and sequence number."""
    return f"{tag[:4]:_<4}{n:015d}"


def snapshot(msg_id: str, when: int, caption: str) -> bytes:
    date = struct.pack(">I", when & 0xFFFFFFFF).hex()[:7].encode()
    cap = caption.encode()[:89].ljust(89, b" ")
    out = date + cap + b"\0" * 12 + b"\0" * 21 + msg_id.encode()[:19].ljust(19, b"\0")
    assert len(out) == SNAPSHOT_SIZE
    return out


def create_folder(root: Path, user: str) -> Path:
    d = folder(root, user)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / INDEX, "wb") as f:
        f.write(header(0))
    return d


def prefill(root: Path, user: str, count: int, body: bytes) -> None:
    """``count`` messages in ``user``'s folder, written directly (not measured)."""
    d = create_folder(root, user)
    snaps = []
    now = int(time.time())
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            mid = message_id("pre", i)
            fd = os.open(f"+{mid}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            snaps.append(snapshot(mid, now, f"prefilled message {i}"))
    finally:
        os.close(dfd)
    with open(d / INDEX, "wb") as f:
        f.write(header(count) + b"".join(snaps))


def file_message(root: Path, lockdir: Path, user: str, msg_id: str, body: bytes) -> None:
    d = folder(root, user)
    lockfd = os.open(lockdir / f"{user}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        fd = os.open(d / INDEX, os.O_RDWR)
        try:
            os.close(os.open(d / MARK, os.O_RDWR | os.O_CREAT, 0o666))
            mfd = os.open(d / f"+{msg_id}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(mfd, body)
            finally:
                os.close(mfd)
            head = os.pread(fd, HEADER_SIZE, 0)
            if not head.startswith(PREFIX):
                raise RuntimeError(f"{d / INDEX}: not a folder index")
            size = os.fstat(fd).st_size
            count = (size - HEADER_SIZE) // SNAPSHOT_SIZE
            os.pwrite(fd, snapshot(msg_id, int(time.time()), f"message {msg_id}"), size)
            os.pwrite(fd, header(count + 1), 0)
        finally:
            os.close(fd)
        os.unlink(d / MARK)
    finally:
        os.close(lockfd)  # releases the flock


def write_main(args: argparse.Namespace) -> int:
    body = args.message.read_bytes()
    n = 0
    for line in sys.stdin:
        user = line.strip()
        if not user:
            continue
        file_message(args.root, args.lockdir, user, message_id(args.tag, n), body)
        n += 1
        print(f"filed {n}", flush=True)
    return 0


class Reader:
    def __init__(self, root: Path, user: str) -> None:
        self.index = folder(root, user) / INDEX
        self.sig: tuple[int, int] | None = None
        self.base = -1
        self.count = 0

    def check(self) -> None:
        st = os.stat(self.index)
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self.sig:
            return
        with open(self.index, "rb") as f:
            head = f.read(HEADER_SIZE)
            if not head.startswith(PREFIX):
                raise RuntimeError(f"{self.index}: not a folder index")
            count = (os.fstat(f.fileno()).st_size - HEADER_SIZE) // SNAPSHOT_SIZE
            if count > self.count:
                f.seek(HEADER_SIZE + self.count * SNAPSHOT_SIZE)
                f.read((count - self.count) * SNAPSHOT_SIZE)
        self.sig = sig
        if self.base < 0:
            self.base = count
        self.count = count


def read_main(args: argparse.Namespace) -> int:
    readers = [Reader(args.root, u) for u in args.users]
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    errors: list[str] = []
    while not stop:
        t0 = time.monotonic()
        for r in readers:
            try:
                r.check()
            except (OSError, RuntimeError) as e:
                errors.append(f"{r.index}: {e}")
        tmp = args.status.with_name(args.status.name + ".tmp")
        tmp.write_text(json.dumps({
            "idle": sum(r.base >= 0 for r in readers),
            "new": sum(r.count - r.base for r in readers if r.base >= 0),
            "per_user": {u: r.count - r.base for u, r in zip(args.users, readers, strict=True)},
            "errors": len(errors), "error": errors[0] if errors else ""}))
        os.replace(tmp, args.status)
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.churn.classic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="file messages for the users named on stdin")
    w.add_argument("--root", type=Path, required=True)
    w.add_argument("--lockdir", type=Path, required=True)
    w.add_argument("--tag", required=True, help="this writer's id prefix")
    w.add_argument("--message", type=Path, required=True)
    r = sub.add_parser("read", help="check folders as an AMS client did")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--status", type=Path, required=True)
    r.add_argument("--interval", type=float, default=1.0)
    r.add_argument("users", nargs="+")
    args = ap.parse_args(argv)
    return write_main(args) if args.cmd == "write" else read_main(args)


if __name__ == "__main__":
    sys.exit(main())
