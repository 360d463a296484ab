"""Garbage and truncated commands against a live bridge: answers, never a crash."""

from __future__ import annotations

import imaplib
import re
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ams.store import Store
from tests.imap_helpers import bridge_process, plaintext
from tests.mx_helpers import add_users

COMMANDS = [b"SELECT", b"FETCH", b"UID FETCH", b"STORE", b"SEARCH", b"LIST", b"APPEND",
            b"COPY", b"MOVE", b"STATUS", b"CREATE", b"RENAME", b"EXPUNGE", b"IDLE", b"LOGIN"]
ARGS = [b"1:*", b"(FLAGS)", b"BODY[", b"BODY[1.2.HEADER]<0.5>", b"{5}", b"{999999999}",
        b"\"unterminated", b"INBOX", b"&Jjo!", b"*", b"%", b"(", b")", b"\x00", b"\xff\xfe",
        b"+FLAGS", b"(\\Seen", b"NOT OR", b"CHARSET X-UNKNOWN", b"~{3}", b"{2+}"]
RESPONSE = re.compile(rb"^(\* |\+|[A-Za-z0-9]+ (OK|NO|BAD) )")


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("garbage")
    from ams.config import config_from_dict
    cfg = plaintext(config_from_dict({
        "store": {"root": str(tmp / "store"), "fsync": "never"},
        "host": {"name": "g1", "cache_dir": str(tmp / "cache")},
        "mail": {"domains": ["example.test"]}}))
    add_users(Store.initialise(cfg), "alice")
    with bridge_process(cfg, tmp / "ams.toml") as port:
        yield port


def exchange(port: int, lines: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"a0 LOGIN alice alice-pw\r\na1 SELECT INBOX\r\n")
        for i, line in enumerate(lines):
            f.write(b"g%d " % i + line + b"\r\n")
        f.write(b"zz NOOP\r\n")
        f.flush()
        s.settimeout(2)
        got = []
        while True:
            try:
                line = f.readline()
            except TimeoutError:
                break
            if not line:
                break
            got.append(line)
            if line.startswith((b"zz ", b"* BYE")):
                break
        return got


command = st.builds(lambda c, a: c + b" " + b" ".join(a), st.sampled_from(COMMANDS),
                    st.lists(st.sampled_from(ARGS) | st.binary(max_size=12), max_size=4))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(command.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                      min_size=1, max_size=5))
def test_garbage_commands_get_answers(bridge: int, lines: list[bytes]) -> None:
    got = exchange(bridge, lines)
    for line in got:
        if line.startswith((b"* ", b"+", b" ")) or not line.strip():
            continue
        assert RESPONSE.match(line) or not line[:1].isalnum() or b"{" in line, line
    assert b"Traceback" not in b"".join(got)
    # The bridge still serves a well-behaved client.
    c = imaplib.IMAP4("127.0.0.1", bridge)
    assert c.login("alice", "alice-pw")[0] == "OK"
    c.logout()


def test_truncated_commands_and_abrupt_closes(bridge: int) -> None:
    for partial in [b"a1 LOGIN alice {8}\r\nalic", b"a1 FETCH 1:* (BODY[",
                    b"a1 APPEND INBOX {50}\r\n"]:
        with socket.create_connection(("127.0.0.1", bridge), timeout=10) as s:
            s.recv(1000)
            s.sendall(partial)
    c = imaplib.IMAP4("127.0.0.1", bridge)
    assert c.login("alice", "alice-pw")[0] == "OK"
    c.logout()
