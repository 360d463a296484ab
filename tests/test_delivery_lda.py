"""The local delivery agent: sysexits codes, dedupe of MTA retries, one-line errors."""

from __future__ import annotations

import io
import logging
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from ams.config import config_from_dict
from ams.store import Spool
from delivery import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    deliver_command,
    deliver_main,
)
from tests.delivery_procs import (
    config_dict,
    delivery_ids,
    folded,
    messages,
    run,
    setup_store,
    spawn,
    stop,
)
from tests.waiting import WAIT

MSG = b"From: s@far.test\r\nSubject: lda\r\nMessage-ID: <lda@far.test>\r\n\r\nhello\r\n"


def one_line(err: str | bytes) -> str:
    text = err.decode() if isinstance(err, bytes) else err
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    assert lines[0].startswith("ams deliver: ")
    return lines[0]


# -- in process ------------------------------------------------------------------------------


def test_files_once_and_dedupes_a_retry(tmp_path: Path) -> None:
    config, _store, reg = setup_store(config_dict(tmp_path), ["ann", "ben"])
    reg.mailboxes("ben").create("Lists")
    rcpts = ["ann@example.test", "ben+Lists@example.test"]
    assert deliver_main(config, rcpts, "s@far.test", MSG) == EX_OK
    assert deliver_main(config, rcpts, "s@far.test", MSG) == EX_OK  # the MTA retried
    (ann,) = messages(reg, "ann")
    assert ann == b"Return-Path: <s@far.test>\r\nDelivered-To: ann@example.test\r\n" + MSG
    assert len(messages(reg, "ben", "Lists")) == 1
    (did,) = delivery_ids(reg, "ann")
    assert did.startswith("lda-") and did.endswith("/ann@example.test")
    # Other bytes (or another sender) are another message.
    assert deliver_main(config, rcpts, "other@far.test", MSG) == EX_OK
    assert deliver_main(config, rcpts, "s@far.test", MSG + b"more\r\n") == EX_OK
    assert len(messages(reg, "ann")) == 3
    # Outside the dedupe window the same bytes are filed again.
    assert deliver_main(config, ["ann@example.test"], "s@far.test", MSG,
                        dedupe_seconds=-10) == EX_OK
    assert len(messages(reg, "ann")) == 4


def test_mbox_from_line_and_missing_sender(tmp_path: Path) -> None:
    config, _store, reg = setup_store(config_dict(tmp_path), ["ann"])
    mbox = b"From s@far.test Mon Jun 10 08:00:00 2024\n" + MSG.replace(b"\r\n", b"\n")
    assert deliver_main(config, ["ann"], None, mbox) == EX_OK
    (m,) = messages(reg, "ann")
    assert m == b"Delivered-To: ann\n" + MSG.replace(b"\r\n", b"\n")
    assert deliver_main(config, ["ann@example.test"], "<>", MSG) == EX_OK
    assert messages(reg, "ann")[1].startswith(b"Return-Path: <>\r\n")


@pytest.mark.parametrize(("rcpts", "code", "needle"), [
    (["nobody@example.test"], EX_NOUSER, "nobody@example.test: unknown user"),
    (["ann@example.test", "nobody@example.test"], EX_NOUSER, "unknown user"),
    (["cat@example.test"], EX_NOUSER, "user disabled"),
    (["ann@far.test"], EX_NOUSER, "not a local domain"),
    (["bad address@example.test"], EX_NOUSER, "bad address"),
    (["bb+news@example.test"], EX_NOUSER, "no such bulletin board"),
    ([], 64, "no recipient"),
])
def test_refused_recipients_file_nothing(tmp_path: Path, rcpts: list[str], code: int,
                                         needle: str) -> None:
    config, _store, reg = setup_store(config_dict(tmp_path), ["ann", "cat"])
    reg.set_disabled("cat", True)
    err = io.StringIO()
    assert deliver_main(config, rcpts, "s@far.test", MSG, stderr=err) == code
    assert needle in one_line(err.getvalue())
    assert folded(reg, "ann").messages == {}  # all or nothing: the MTA bounces them all


@pytest.mark.parametrize(("message", "needle"), [
    (b"", "empty message"),
    (b"From x Mon Jun 10\n", "empty message"),
    (b"Subject: a\r\n\r\nnul\0byte\r\n", "NUL"),
    (b"not a header line\r\n\r\nbody\r\n", "header field"),
    (b": no name\r\n\r\n", "header field"),
    (b"Subject: " + b"x" * 2000 + b"\r\n\r\n", "limit is 1000"),
])
def test_malformed_message(tmp_path: Path, message: bytes, needle: str) -> None:
    cfg = config_dict(tmp_path)
    cfg["limits"]["max_message_bytes"] = 1000
    config, _store, _reg = setup_store(cfg, ["ann"])
    err = io.StringIO()
    assert deliver_main(config, ["ann"], "s@far.test", message, stderr=err) == EX_DATAERR
    assert needle in one_line(err.getvalue())
    err = io.StringIO()
    assert deliver_main(config, ["ann"], "bad sender", MSG, stderr=err) == EX_DATAERR
    assert "bad sender" in one_line(err.getvalue())


def test_forward_goes_to_the_out_spool(tmp_path: Path) -> None:
    config, store, reg = setup_store(config_dict(tmp_path), ["dan"])
    reg.set_forward("dan", "dan@far.test")
    assert deliver_main(config, ["dan@example.test"], "s@far.test", MSG) == EX_OK
    spool = Spool(store)
    (entry,) = list(spool.list_entries("out"))
    assert entry.envelope is not None and entry.envelope.rcpt_to == ("dan@far.test",)
    assert entry.envelope.mail_from == "s@far.test"
    assert spool.read("out", entry.id).message == b"Delivered-To: dan@example.test\r\n" + MSG
    assert folded(reg, "dan").messages == {}


def test_config_errors_are_ex_config(tmp_path: Path) -> None:
    # A config naming a directory that is not a store.
    config = config_from_dict(config_dict(tmp_path))
    err = io.StringIO()
    assert deliver_main(config, ["ann"], None, MSG, stderr=err) == EX_CONFIG
    assert "not an AMS store" in one_line(err.getvalue())
    # No config file at all, and a config file with a misspelt key.
    err = io.StringIO()
    assert deliver_command(str(tmp_path / "nope.toml"), ["ann"], None, io.BytesIO(MSG),
                           stderr=err) == EX_CONFIG
    assert "no config file" in one_line(err.getvalue())
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nroot = "/x"\nlock_methd = "fcntl"\n')
    err = io.StringIO()
    assert deliver_command(str(bad), ["ann"], None, io.BytesIO(MSG), stderr=err) == EX_CONFIG
    assert "lock_methd" in one_line(err.getvalue())


def test_deliver_command_reads_stdin(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    _config, _store, reg = setup_store(cfg, ["ann"])
    toml = tmp_path / "ams.toml"
    toml.write_text(f'[store]\nroot = "{tmp_path / "store"}"\nfsync = "never"\n'
                    f'[host]\nname = "h1"\ncache_dir = "{tmp_path / "cache"}"\n'
                    '[mail]\ndomains = ["example.test"]\n')
    assert deliver_command(str(toml), ["ann@example.test"], "s@far.test",
                           io.BytesIO(MSG)) == EX_OK
    assert len(messages(reg, "ann")) == 1


# -- real processes ---------------------------------------------------------------------


def test_exit_codes_as_a_process(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    _config, _store, reg = setup_store(cfg, ["ann"])
    ok = run("deliver", cfg, "s@far.test", "ann@example.test", stdin=MSG)
    assert ok.returncode == EX_OK and ok.stderr == b"" and ok.stdout == b""
    nouser = run("deliver", cfg, "s@far.test", "nobody@example.test", stdin=MSG)
    assert nouser.returncode == EX_NOUSER
    assert "unknown user" in one_line(nouser.stderr)
    assert delivery_ids(reg, "ann") == Counter({next(iter(delivery_ids(reg, "ann"))): 1})


def test_lock_timeout_is_tempfail_and_retry_files_once(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path, lock_timeout=0.5)
    _config, _store, reg = setup_store(cfg, ["ann", "ben"])
    holder = spawn("hold-lock", cfg, "ben", "INBOX", stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        busy = run("deliver", cfg, "s@far.test", "ann@example.test", "ben@example.test",
                   stdin=MSG)
        assert busy.returncode == EX_TEMPFAIL
        assert "ben@example.test" in one_line(busy.stderr)
        assert len(messages(reg, "ann")) == 1  # filed before the timeout on ben
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(WAIT)
        stop(holder)
    # The MTA retries the same bytes: ben gets it, ann does not get a second copy.
    again = run("deliver", cfg, "s@far.test", "ann@example.test", "ben@example.test",
                stdin=MSG)
    assert again.returncode == EX_OK, again.stderr
    assert list(delivery_ids(reg, "ann").values()) == [1]
    assert list(delivery_ids(reg, "ben").values()) == [1]


def test_deliver_command_is_quiet_and_leaves_logging_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_LOG_LEVEL", raising=False)
    cfg = config_dict(tmp_path)
    setup_store(cfg, ["ann"])
    toml = tmp_path / "ams.toml"
    toml.write_text(f'[store]\nroot = "{tmp_path / "store"}"\nfsync = "never"\n'
                    '[mail]\ndomains = ["example.test"]\n')
    caplog.set_level(logging.INFO, logger="delivery")
    err = io.StringIO()
    assert deliver_command(str(toml), ["nobody@example.test"], None, io.BytesIO(MSG),
                           stderr=err) == EX_NOUSER
    assert "unknown user" in one_line(err.getvalue())
    assert caplog.records == []  # nothing logged during the run...
    logging.getLogger("delivery.test").info("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]  # ...and logging is back
