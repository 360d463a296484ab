"""Real IMAP clients from Debian against the bridge: mbsync (isync) and mutt."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trio

from ams.store import NewMessage, Store, UserRegistry, fold
from tests.conftest import MakeConfig
from tests.imap_helpers import plaintext, running_imap
from tests.mx_helpers import add_users

N = 1000


def seed(store: Store, n: int) -> None:
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    inbox.append([NewMessage(
        b"From: b@x.test\r\nTo: alice@example.test\r\nSubject: m%d\r\nMessage-ID: <m%d@x>\r\n"
        b"\r\nbody of message %d\r\n" % (i, i, i), internal_date=1_700_000_000 + i,
        flags=("\\Seen",) if i % 3 == 0 else ()) for i in range(n)])


def maildir_flags(folder: Path) -> list[str]:
    out = []
    for sub in ("cur", "new"):
        for name in os.listdir(folder / sub):
            out.append(name.split(":2,", 1)[1] if ":2," in name else "")
    return out


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync (mbsync) not installed")
async def test_mbsync_round_trip_with_flags(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = plaintext(make_config())
    store = Store.initialise(cfg)
    add_users(store, "alice")
    seed(store, N)
    maildir = tmp_path / "maildir"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"

    def sync() -> None:
        r = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    async with running_imap(cfg) as port:
        rc.write_text(f"""IMAPAccount ams
Host 127.0.0.1
Port {port}
User alice
Pass alice-pw
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account ams

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel ams
Far :remote:
Near :local:
Patterns *
Create Both
Sync All
SyncState *
""")
        await trio.to_thread.run_sync(sync)
        flags = maildir_flags(maildir / "INBOX")
        assert len(flags) == N
        assert sum("S" in f for f in flags) == len(range(0, N, 3))
        # Flag 10 messages and delete 5 locally, add one, sync back.
        cur = maildir / "INBOX" / "cur"
        names = sorted(os.listdir(cur))
        for name in names[:10]:
            base, info = name.split(":2,")
            os.rename(cur / name, cur / f"{base}:2,F{info}")
        for name in names[10:15]:
            base, info = name.split(":2,")
            os.rename(cur / name, cur / f"{base}:2,{''.join(sorted(info + 'T'))}")
        (maildir / "INBOX" / "new" / "1700000000.local.x").write_bytes(
            b"Subject: written locally\r\n\r\nhello\r\n")
        await trio.to_thread.run_sync(sync)
        await trio.to_thread.run_sync(sync)  # a second run has nothing to do
    state = fold(UserRegistry(store).mailboxes("alice").open("INBOX").reader())
    flagged = [m for m in state.messages.values() if "\\Flagged" in m.flags]
    deleted = [m for m in state.messages.values() if "\\Deleted" in m.flags]
    assert len(flagged) == 10 and len(deleted) == 5
    assert len(state.messages) == N + 1


@pytest.mark.skipif(shutil.which("mutt") is None or shutil.which("tmux") is None,
                    reason="mutt and tmux not installed")
async def test_mutt_opens_the_mailbox_and_reads_a_message(make_config: MakeConfig,
                                                         tmp_path: Path) -> None:
    cfg = plaintext(make_config())
    store = Store.initialise(cfg)
    add_users(store, "alice")
    seed(store, 3)
    session = f"ams-mutt-{os.getpid()}"
    muttrc = tmp_path / "muttrc"
    home = tmp_path / "home"
    home.mkdir()

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "HOME": str(home)}).stdout

    def screen_shows(text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = tmux("capture-pane", "-p", "-t", session)
            if text in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"mutt never showed {text!r}:\n{shown}")

    async with running_imap(cfg) as port:
        muttrc.write_text(f"""set folder="imap://alice@127.0.0.1:{port}/"
set spoolfile="+INBOX"
set imap_pass="alice-pw"
set ssl_starttls=no
set ssl_force_tls=no
set header_cache=""
set message_cachedir=""
set sort=date
set mail_check=1
set timeout=1
set pager_stop=yes
""")

        inbox = UserRegistry(store).mailboxes("alice").open("INBOX")

        def seen() -> int:
            return sum("\\Seen" in m.flags for m in fold(inbox.reader()).messages.values())

        def drive() -> tuple[str, str]:
            tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "30",
                 f"mutt -n -F {muttrc}")
            try:
                index = screen_shows("m2")
                tmux("send-keys", "-t", session, "Enter")
                pager = screen_shows("body of message")
                tmux("send-keys", "-t", session, "q", "$")  # back to the index; sync flags
                deadline = time.monotonic() + 20
                while seen() < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                return index, pager
            finally:
                tmux("kill-session", "-t", session)

        index, pager = await trio.to_thread.run_sync(drive)
    assert "m0" in index and "m1" in index and "m2" in index
    assert "body of message" in pager
    assert seen() == 2  # m0 was seeded \\Seen; the one mutt showed is now \\Seen too
