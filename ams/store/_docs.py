"""Generate docs/format.md from the docstrings that specify the format.

``python -m ams.store._docs > docs/format.md``.  A test checks the file is
current, so the document cannot drift from the code that reads and writes
the store.
"""

from __future__ import annotations

import importlib
import inspect

INTRO = """\
# The AMS on-disk format

This is the complete specification of what AMS keeps on the shared
filesystem, exact enough to write another implementation that reads and
writes the same store.  It is generated from the docstrings of the modules
that implement it (`python -m ams.store._docs > docs/format.md`); a test fails
when the two differ.

## What each step relies on from the filesystem

| step | operations | relied-on guarantee |
|---|---|---|
| publish any file (user record, mailbox list, spool entry, head) | write in a staging dir, fsync, rename into place, fsync dir | rename is atomic; fsync makes file and entry durable |
| create a user, a dotlock, a heartbeat | open(O_CREAT\\|O_EXCL) | exactly one creator wins (losers may see EEXIST, or EPERM on sshfs) |
| claim a spool entry | rename into the worker's claims dir | exactly one concurrent rename of a source succeeds |
| append to a mailbox log | lock; open; pread the tail; pwrite at the tail offset; fsync; close; unlock | close-to-open consistency; the lock (fcntl, or dotlock by O_EXCL) |
| read new mail | open the known segment; fstat size; pread from the known offset; close | close-to-open consistency; no directory listing |
| rollover | create next segment (staging + rename), fsync dir, then write NEXT | rename atomicity; fsync order |
| compaction | write new generation, fsync, rename `head`, fsync dir, write SEALED | rename atomicity; fsync order |

Never relied on: O_APPEND between hosts, mmap of shared files, inotify,
fresh directory listings for news, synchronised clocks beyond
`store.clock_skew`, hard links across directories.

Integers are little-endian throughout; JSON files are UTF-8.
"""

SECTIONS = [
    ("Store layout", "ams.store.store"),
    ("Mailbox log: records and segments", "ams.store.format"),
    ("Mailbox log: writers, readers, crash safety", "ams.store.log"),
    ("Locks", "ams.store.lock"),
    ("Users and aliases", "ams.store.users"),
    ("Mailbox lists", "ams.store.mailboxes"),
    ("Spool", "ams.store.spool"),
    ("Spool entries", "ams.store.spool_entry"),
    ("Outgoing queue: per-recipient results and deferred buckets", "ams.store.outqueue"),
    ("Bulletin boards: registry and board directories", "bboard._registry"),
    ("Bulletin boards: posting, moderation, expiry", "bboard._boards"),
    ("Bulletin boards: per-user state", "bboard._state"),
    ("Checking and repair", "ams.store.fsck"),
    ("The local index (per host, never on the shared store)", "ams.index._codec"),
]


def render() -> str:
    out = [INTRO]
    for title, modname in SECTIONS:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        doc = inspect.getdoc(mod) or ""
        out.append(f"## {title}\n\n_From `{modname}`._\n\n```text\n{doc}\n```\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
