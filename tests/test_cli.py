"""The ``ams`` command, run as a real process: exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

AMS = [sys.executable, "-m", "ams.cli"]


def ams(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AMS, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    r = ams("init", "--root", "store", "--domain", "example.test", "--cache-dir", "cache",
            "--host-name", "h1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "ams.toml")
    return tmp_path


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ams: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0]


def test_init_user_and_mailboxes(site: Path) -> None:
    assert ams("user", "add", "alice", "--password-stdin", cwd=site, stdin="s3cret\n"
               ).returncode == 0
    r = ams("user", "list", cwd=site)
    assert r.stdout.split() == ["alice"]
    r = ams("mailbox", "create", "--user", "alice", "Lists/Python", cwd=site)
    assert r.returncode == 0
    r = ams("mailbox", "rename", "--user", "alice", "Lists", "Listen", cwd=site)
    assert r.returncode == 0, r.stderr
    names = [ln.split("\t")[0] for ln in ams("mailbox", "list", "--user", "alice",
                                              cwd=site).stdout.splitlines()]
    assert "Listen/Python" in names and "INBOX" in names and "Lists/Python" not in names
    from ams.config import load_config
    from ams.store import Store, UserRegistry
    users = UserRegistry(Store(load_config(site / "ams.toml")))
    assert users.verify_password("alice", "s3cret")
    assert not users.verify_password("alice", "wrong")


def test_config_from_env_and_flag_positions(site: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    r = ams("user", "list", cwd=other, env={"AMS_CONFIG": str(site / "ams.toml")})
    assert r.returncode == 0
    assert ams("--config", str(site / "ams.toml"), "user", "list", cwd=other).returncode == 0
    assert ams("user", "list", "--config", str(site / "ams.toml"), cwd=other).returncode == 0
    one_line_error(ams("user", "list", cwd=other), 2, "no config file")


@pytest.mark.parametrize("text,needle", [
    ('[store]\nroot = "s"\nlok = 1\n', "unknown key 'store.lok'"),
    ('[store]\nroot = "s"\nlock_method = "flock"\n', "'store.lock_method' must be one of"),
    ('[host]\nname = "x"\n', "missing required setting 'store'"),
    ('[store]\nroot = "s"\nsegment_bytes = "big"\n', "'store.segment_bytes' must be an integer"),
    ('[store\nroot = "s"\n', "not valid TOML"),
    ('[store]\nroot = "s"\n[limits]\nmax_recipients = 0\n', "'limits.max_recipients'"),
    ('[store]\nroot = "s"\n[imap]\nidle_poll = 0\n', "'imap.idle_poll' must be more than 0"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    one_line_error(ams("--config", "bad.toml", "user", "list", cwd=tmp_path), 2, needle)


def test_bad_input_is_one_line(site: Path) -> None:
    one_line_error(ams("user", "add", "Bad/Name", "--password-stdin", cwd=site, stdin="x\n"), 2,
                   "bad user name")
    assert ams("user", "add", "bob", "--password-stdin", cwd=site, stdin="x\n").returncode == 0
    one_line_error(ams("user", "add", "bob", "--password-stdin", cwd=site, stdin="x\n"), 1)
    one_line_error(ams("user", "add", "carol", cwd=site, stdin="x\n"), 2, "--password-stdin")
    one_line_error(ams("mailbox", "delete", "--user", "bob", "INBOX", cwd=site), 2, "INBOX")
    one_line_error(ams("mailbox", "list", "--user", "nobody", cwd=site), 1)
    one_line_error(ams("mailbox", "create", "--user", "bob", "a//b", cwd=site), 2)


def test_fsck_reports_then_repairs(site: Path) -> None:
    assert ams("user", "add", "alice", "--password-stdin", cwd=site, stdin="pw\n").returncode == 0
    from ams.config import load_config
    from ams.store import NewMessage, Store, UserRegistry
    store = Store(load_config(site / "ams.toml"))
    log = UserRegistry(store).mailboxes("alice").open("INBOX")
    log.append([NewMessage(b"Subject: %d\r\n\r\nhi\r\n" % i, internal_date=0)
                for i in range(20)])
    r = ams("fsck", cwd=site)
    assert r.returncode == 0 and "0 problems" in r.stderr
    seg = log.segment_path(1, 1)
    data = bytearray(seg.read_bytes())
    rec5 = log.reader().poll().records[4]
    data[rec5.offset + 44] ^= 0x10
    seg.write_bytes(bytes(data))
    r = ams("fsck", cwd=site)
    assert r.returncode == 1
    assert f"alice:INBOX: {seg} @{rec5.offset}: damaged bytes" in r.stdout
    r = ams("fsck", "--repair", cwd=site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "salvaged 19 messages" in r.stdout
    assert ams("fsck", cwd=site).returncode == 0


def test_fsck_checks_bboard_logs(site: Path) -> None:
    assert ams("user", "add", "alice", "--password-stdin", cwd=site, stdin="pw\n").returncode == 0
    assert ams("bboard", "create", "andrew.general", cwd=site).returncode == 0
    for i in range(3):
        r = ams("bboard", "post", "andrew.general", "--subject", f"s{i}", "--as", "alice",
                cwd=site, stdin=f"body {i}\n")
        assert r.returncode == 0, r.stderr
    r = ams("fsck", cwd=site)
    assert r.returncode == 0 and "0 problems" in r.stderr, r.stderr
    from ams.config import load_config
    from ams.store import Store
    from bboard import Bboards
    boards = Bboards(Store(load_config(site / "ams.toml")))
    log = boards.open("andrew.general")
    seg = log.segment_path(1, 1)
    data = bytearray(seg.read_bytes())
    rec = log.reader().poll().records[1]
    data[rec.offset + 44] ^= 0x10
    seg.write_bytes(bytes(data))
    r = ams("fsck", cwd=site)
    assert r.returncode == 1
    assert f"bboard andrew.general: {seg} @{rec.offset}: damaged bytes" in r.stdout, r.stdout
    assert ams("fsck", "--repair", cwd=site).returncode == 0
    assert ams("fsck", cwd=site).returncode == 0


def test_status_shows_queues_and_workers(site: Path) -> None:
    import json

    from ams.config import load_config
    from ams.store import Spool, Store
    spool = Spool(Store(load_config(site / "ams.toml")))
    for _ in range(3):
        spool.enqueue("in", mail_from="a@x.test", rcpt_to=["b@example.test"], message=b"hi\r\n")
    with spool.register_worker() as w:
        r = ams("status", "--json", cwd=site)
        report = json.loads(r.stdout)
        assert report["queues"]["in"]["queued"] == 3
        assert report["queues"]["out"]["queued"] == 0
        assert [x["id"] for x in report["workers"]] == [w.id]
        r = ams("status", cwd=site)
        assert "queue in: queued 3" in r.stdout and "live workers: 1" in r.stdout


def test_reindex_rebuilds_the_local_index(site: Path) -> None:
    assert ams("user", "add", "alice", "--password-stdin", cwd=site, stdin="pw\n").returncode == 0
    from ams.config import load_config
    from ams.index import Index
    from ams.store import NewMessage, Store, UserRegistry
    cfg = load_config(site / "ams.toml")
    log = UserRegistry(Store(cfg)).mailboxes("alice").open("INBOX")
    log.append([NewMessage(b"Subject: %d\r\n\r\nhi\r\n" % i, internal_date=0) for i in range(25)])
    r = ams("reindex", cwd=site)
    assert r.returncode == 0, r.stderr
    assert "6 mailboxes, 25 messages indexed, 0 failed" in r.stderr
    with Index(cfg) as ix:
        assert ix.uids(log.head().id) == list(range(1, 26))


def test_queue_list_show_retry_delete(site: Path) -> None:
    from ams.config import load_config
    from ams.store import Place, Spool, Store
    spool = Spool(Store(load_config(site / "ams.toml")), max_attempts=1)
    envs = [spool.enqueue("in", mail_from="a@x.test", rcpt_to=[f"u{i}@example.test"],
                          message=b"Subject: q%d\r\n\r\nhi\r\n" % i) for i in range(3)]
    with spool.register_worker() as w:
        for c in w.claim_batch("in", 10):
            if c.entry_id == envs[0].id:
                w.fail(c, "mailbox exploded")
            else:
                w.release(c, count=False)
    r = ams("queue", "list", cwd=site)
    assert r.returncode == 0
    assert sorted(ln.split("\t")[0] for ln in r.stdout.splitlines()) == sorted(
        e.id for e in envs[1:])
    r = ams("queue", "list", "--failed", cwd=site)
    assert envs[0].id in r.stdout and "reason: mailbox exploded" in r.stdout
    r = ams("queue", "show", "--failed", envs[0].id, cwd=site)
    assert r.returncode == 0 and "Subject: q0" in r.stdout and "from: <a@x.test>" in r.stdout
    assert ams("queue", "retry", envs[0].id, cwd=site).returncode == 0
    assert spool.depth("in", Place.FAILED) == 0
    one_line_error(ams("queue", "delete", "nonexistent-id", cwd=site), 2, "not a spool entry id")
    absent = envs[0].id[:-2] + "zz"
    one_line_error(ams("queue", "delete", absent, cwd=site), 1, "no such entry")
    ids = [ln.split("\t")[0] for ln in ams("queue", "list", cwd=site).stdout.splitlines()]
    assert envs[0].id in ids
    assert ams("queue", "delete", *ids, cwd=site).returncode == 0
    assert spool.depth("in") == 0


def test_roles_refuse_a_filesystem_doctor_found_unsafe(site: Path) -> None:
    import json

    from ams.doctor import fs_identity, verdict_path

    root = site / "store"
    path = verdict_path(root, "h1")
    path.parent.mkdir(parents=True)
    verdict = {"format": 1, "host": "h1", "time": 0, "date": "then", "run": "r1",
               "verdict": "unsafe", "scope": "cross-host", "lock_method": None,
               "methods_ok": [], "settings": {}, "reasons": ["appends seen 1 s late"],
               "filesystem": fs_identity(root), "peers": ["h2"]}
    path.write_text(json.dumps(verdict))
    for role in (["mx", "--listen", "127.0.0.1:0"], ["worker"], ["imap", "--listen",
                                                                  "127.0.0.1:0"]):
        one_line_error(ams(*role, cwd=site), 1, "unsafe", "appends seen 1 s late")
    r = ams("deliver", "-r", "nobody@example.test", cwd=site, stdin="Subject: x\n\nhi\n")
    assert r.returncode == 78 and "unsafe" in r.stderr  # EX_CONFIG: the MTA retries later
    # A verdict that allows only dotlock stops an fcntl host, not a dotlock one.
    verdict.update(verdict="safe", lock_method="dotlock", methods_ok=["dotlock"])
    path.write_text(json.dumps(verdict))
    one_line_error(ams("worker", cwd=site), 1, 'lock_method = "dotlock"')
