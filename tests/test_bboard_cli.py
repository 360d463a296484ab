"""``ams bboard`` as real processes: concurrent posts, read pointers, moderation, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ams.config import load_config
from ams.store import LogReader, Store, fold
from ams.store.format import Append
from bboard import Bboards
from tests.mx_helpers import add_users
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent
AMS = [sys.executable, "-m", "ams.cli"]


def ams(site: Path, *args: str, stdin: str | bytes = b"", user: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "AMS_CONFIG": str(site / "ams.toml"),
         "USER": user or "nobody-here", **(env or {})}
    r = subprocess.run([*AMS, *args], cwd=site, capture_output=True, timeout=WAIT, env=e,
                       input=stdin.encode() if isinstance(stdin, str) else stdin)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                       r.stderr.decode())


def refused(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ams: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "ams.toml").write_text(
        f'[store]\nroot = "{tmp_path / "store"}"\nfsync = "never"\n'
        f'[host]\nname = "h1"\ncache_dir = "{tmp_path / "cache"}"\n'
        '[mail]\ndomains = ["example.test"]\n')
    store = Store.initialise(load_config(tmp_path / "ams.toml"))
    add_users(store, "alice", "bob", "carol", "mod")
    return tmp_path


def boards_of(site: Path) -> Bboards:
    return Bboards(Store(load_config(site / "ams.toml")))


def test_fifty_concurrent_posts(site: Path) -> None:
    assert ams(site, "bboard", "create", "andrew.general").returncode == 0
    e = {**os.environ, "PYTHONPATH": str(ROOT), "AMS_CONFIG": str(site / "ams.toml")}
    procs = [subprocess.Popen([*AMS, "bboard", "post", "andrew.general", "--as", "alice",
                               "--subject", f"post-{i}"], cwd=site, env=e,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(50)]
    printed: dict[int, int] = {}
    deadline = time.monotonic() + 4 * WAIT
    for i, p in enumerate(procs):
        out, err = p.communicate(f"body of post {i}\n".encode(),
                                 timeout=max(deadline - time.monotonic(), 1))
        assert p.returncode == 0, err.decode()
        printed[i] = int(out.decode().strip())
    assert sorted(printed.values()) == list(range(1, 51))  # unique UIDs, none skipped
    boards = boards_of(site)
    lg = boards.open("andrew.general")
    uids_in_log_order = [rec.uid for rec in LogReader(lg.path).poll().records
                         if isinstance(rec.body, Append)]
    assert uids_in_log_order == list(range(1, 51))  # ordered as written
    st = fold(lg.reader())
    by_subject = {}
    for uid, m in st.messages.items():
        body = lg.read_message(m.location)
        subject = body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert subject not in by_subject  # every post present once
        by_subject[subject] = uid
    assert by_subject == {f"post-{i}": printed[i] for i in range(50)}


def test_read_pointers_and_whats_new(site: Path) -> None:
    assert ams(site, "bboard", "create", "andrew.general", "--description", "Talk").returncode == 0
    for i in range(3):
        r = ams(site, "bboard", "post", "andrew.general", "--subject", f"s{i}", user="alice",
                stdin=f"text {i}\n")
        assert r.returncode == 0 and r.stdout.strip() == str(i + 1), r.stderr
    for who in ("bob", "carol"):
        assert ams(site, "bboard", "subscribe", "andrew.general", user=who).returncode == 0
    assert ams(site, "bboard", "list", "--subscribed", user="bob").stdout == (
        "andrew.general\t3 unread\t3 posts\n")
    r = ams(site, "bboard", "read", "andrew.general", "--new", user="bob")
    assert r.returncode == 0
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("---")] == [
        "--- andrew.general #1 ---", "--- andrew.general #2 ---", "--- andrew.general #3 ---"]
    assert "From: alice@example.test" in r.stdout and "text 2" in r.stdout
    assert ams(site, "bboard", "read", "andrew.general", "--new", user="bob").stdout == (
        "no new posts on andrew.general\n")
    ams(site, "bboard", "post", "andrew.general", "--subject", "s3", user="alice",
        stdin="fourth\n")
    assert ams(site, "bboard", "list", "--subscribed", user="bob").stdout == (
        "andrew.general\t1 unread\t4 posts\n")
    # carol's pointer did not move when bob read.
    assert ams(site, "bboard", "list", "--subscribed", "--as", "carol").stdout == (
        "andrew.general\t4 unread\t4 posts\n")
    r = ams(site, "bboard", "read", "andrew.general", "--new", user="bob")
    assert "#4 ---" in r.stdout and "#3 ---" not in r.stdout and "fourth" in r.stdout
    # Reading one old post with --uid does not touch the others.
    r = ams(site, "bboard", "read", "andrew.general", "--uid", "2", "--as", "carol")
    assert "#2 ---" in r.stdout and "text 1" in r.stdout
    assert ams(site, "bboard", "list", "--subscribed", user="carol").stdout == (
        "andrew.general\t3 unread\t4 posts\n")
    ams(site, "bboard", "unsubscribe", "andrew.general", user="carol")
    assert ams(site, "bboard", "list", "--subscribed", user="carol").stdout == ""


def test_reply_threads_and_non_ascii(site: Path) -> None:
    ams(site, "bboard", "create", "org.acm.announce")
    r = ams(site, "bboard", "post", "org.acm.announce", "--subject", "Grüße aus Zürich",
            user="alice", stdin="Schöne Grüße\n")
    assert r.stdout.strip() == "1"
    assert ams(site, "bboard", "post", "org.acm.announce", "--reply-to", "1", user="bob",
               stdin="thanks\n").stdout.strip() == "2"
    boards = boards_of(site)
    first, reply = (boards.message("org.acm.announce", u) for u in (1, 2))
    head1 = first.split(b"\r\n\r\n")[0]
    assert b"Subject: =?utf-8?" in head1 and b"charset=\"utf-8\"" in head1
    assert b"MIME-Version: 1.0" in head1 and b"Date: " in head1
    mid = head1.split(b"Message-ID: ")[1].split(b"\r\n")[0]
    head2 = reply.split(b"\r\n\r\n")[0]
    assert b"In-Reply-To: " + mid in head2 and b"References: " + mid in head2
    assert b"From: bob@example.test" in head2 and b"Subject: Re: =?utf-8?" in head2
    r = ams(site, "bboard", "read", "org.acm.announce", "--uid", "1", user="carol")
    assert "Subject: Grüße aus Zürich" in r.stdout and "Schöne Grüße" in r.stdout
    raw = b"From: list@far.test\r\nSubject: raw one\r\n\r\nas is\r\n"
    assert ams(site, "bboard", "post", "org.acm.announce", "--raw", user="carol",
               stdin=raw).stdout.strip() == "3"
    assert boards.message("org.acm.announce", 3) == raw


def test_moderated_posts_invisible_until_approved(site: Path) -> None:
    assert ams(site, "bboard", "create", "mod.board", "--post", "moderated", "--moderator",
               "mod").returncode == 0
    r = ams(site, "bboard", "post", "mod.board", "--subject", "please", user="alice",
            stdin="x\n")
    assert r.returncode == 0 and r.stdout.strip() == "pending 1" and "moderated" in r.stderr
    ams(site, "bboard", "post", "mod.board", "--subject", "spam", user="bob", stdin="y\n")
    assert ams(site, "bboard", "read", "mod.board", user="carol").stdout == (
        "no posts on mod.board\n")
    assert ams(site, "bboard", "pending", "mod.board", user="mod").stdout.count("\n") == 2
    refused(ams(site, "bboard", "approve", "mod.board", "1", user="alice"), 1,
            "not a moderator")
    refused(ams(site, "bboard", "pending", "mod.board", user="alice"), 1, "not a moderator")
    assert ams(site, "bboard", "approve", "mod.board", "1", user="mod").stdout == (
        "approved 1: post 1\n")
    assert ams(site, "bboard", "reject", "mod.board", "2", user="mod").returncode == 0
    r = ams(site, "bboard", "read", "mod.board", user="carol")
    assert "Subject: please" in r.stdout and "spam" not in r.stdout
    refused(ams(site, "bboard", "approve", "mod.board", "1", user="mod"), 1,
            "no pending post 1")
    assert "pending:      0" in ams(site, "bboard", "info", "mod.board").stdout


def test_approve_killed_half_way_publishes_once(site: Path) -> None:
    ams(site, "bboard", "create", "mod.board", "--post", "moderated", "--moderator", "mod")
    ams(site, "bboard", "post", "mod.board", "--subject", "once", user="alice", stdin="x\n")
    r = ams(site, "bboard", "approve", "mod.board", "1", user="mod",
            env={"AMS_CRASHPOINT": "bboard-approve-published"})
    assert r.returncode == 137
    assert ams(site, "bboard", "approve", "mod.board", "1", user="mod").stdout == (
        "approved 1: post 1\n")
    boards = boards_of(site)
    assert [p.uid for p in boards.posts("mod.board")] == [1] and boards.pending(
        "mod.board") == []


def test_refusals_are_one_line_and_post_nothing(site: Path) -> None:
    ams(site, "bboard", "create", "members.only", "--post", "members", "--member", "alice")
    ams(site, "bboard", "create", "secret", "--read", "list", "--reader", "bob")
    refused(ams(site, "bboard", "post", "nosuch.board", "--subject", "s", user="alice",
                stdin="x"), 1, "no bboard 'nosuch.board'")
    refused(ams(site, "bboard", "read", "nosuch.board", user="alice"), 1, "no bboard")
    refused(ams(site, "bboard", "subscribe", "nosuch.board", user="alice"), 1, "no bboard")
    refused(ams(site, "bboard", "post", "members.only", "--subject", "s", user="bob",
                stdin="x"), 1, "only members may post")
    refused(ams(site, "bboard", "read", "secret", user="alice"), 1, "may not read")
    refused(ams(site, "bboard", "subscribe", "secret", user="alice"), 1, "may not read")
    assert ams(site, "bboard", "list", user="alice").stdout.splitlines() == [
        "members.only\tmembers\tall\t"]  # secret is not listed for alice
    # (every rule is in tests/test_bboard.py; here, that the command says so in one line)
    for bad in ("..", "../../etc", "Upper.Case", ""):
        refused(ams(site, "bboard", "post", bad, "--subject", "s", user="alice", stdin="x"),
                2, "bboard name")
    for bad in ("a..b", "a/b"):
        refused(ams(site, "bboard", "create", bad), 2, "bboard name")
    refused(ams(site, "bboard", "post", "members.only", "--subject", "s", stdin="x"), 2,
            "--as USER")
    refused(ams(site, "bboard", "post", "members.only", "--as", "ghost", "--subject", "s",
                stdin="x"), 1, "no user 'ghost'")
    refused(ams(site, "bboard", "post", "members.only", user="alice", stdin="x"), 2,
            "--subject")
    refused(ams(site, "bboard", "post", "members.only", "--raw", user="alice",
                stdin="no header here"), 2, "header field")
    refused(ams(site, "bboard", "post", "members.only", "--subject", "s", user="alice",
                stdin=b"\xff\xfe"), 2, "UTF-8")
    refused(ams(site, "bboard", "create", "m", "--post", "moderated"), 2, "moderator")
    refused(ams(site, "bboard", "delete", "nosuch"), 1, "no bboard")
    refused(ams(site, "bboard", "set", "members.only"), 2, "nothing to change")
    boards = boards_of(site)
    assert boards.posts("members.only") == [] and boards.posts("secret") == []
    assert [b.name for b in boards.list()] == ["members.only", "secret"]


def test_set_info_expire_delete(site: Path) -> None:
    ams(site, "bboard", "create", "a.b", "--expire-days", "30")
    r = ams(site, "bboard", "set", "a.b", "--post", "members", "--add-member", "carol",
            "--add-moderator", "mod", "--expire-days", "5", "--description", "Five days")
    assert r.returncode == 0, r.stderr
    out = ams(site, "bboard", "info", "a.b").stdout
    for needle in ("post:         members", "members:      carol", "moderators:   mod",
                   "expire days:  5", "description:  Five days",
                   "address:      bb+a.b@example.test"):
        assert needle in out
    r = ams(site, "bboard", "expire")
    assert r.returncode == 0 and "1 bboards, 0 posts expired, 0 failed" in r.stderr
    assert ams(site, "bboard", "delete", "a.b").stdout == "deleted bboard a.b\n"
    assert ams(site, "bboard", "list").stdout == ""
