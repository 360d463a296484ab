"""Bboards through the IMAP bridge: the shared namespace, per-user flags,
posting by APPEND and COPY, moderators' expunge, and NOMODSEQ."""

from __future__ import annotations

import imaplib
import re
import time

import pytest
import trio

from ams.store import Store
from bboard import Bboards, BoardInfo
from tests.conftest import MakeConfig
from tests.imap_helpers import RawIMAP, plaintext, running_imap
from tests.mx_helpers import add_users


def post(n: int, board: str = "andrew.general") -> bytes:
    return (b"From: Poster <poster@x.test>\r\nSubject: %s post %d\r\n"
            b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nbody %d\r\n" % (board.encode(), n, n))


def flags_of(lines: list[bytes]) -> dict[int, set[str]]:
    """{UID: flags} from untagged FETCH lines."""
    out = {}
    for ln in lines:
        m = re.search(rb"UID (\d+)", ln)
        f = re.search(rb"FLAGS \(([^)]*)\)", ln)
        if m and f:
            out[int(m.group(1))] = set(f.group(1).decode().split())
    return out


@pytest.fixture
def site(make_config: MakeConfig) -> tuple[object, Store, Bboards, dict[str, BoardInfo]]:
    cfg = plaintext(make_config())
    store = Store.initialise(cfg)
    add_users(store, "alice", "bob", "mod")
    boards = Bboards(store)
    made = {
        "general": boards.create("andrew.general", description="General"),
        "announce": boards.create("org.acm.announce", post="moderated", moderators=["mod"]),
        "private": boards.create("staff.private", read="list", readers=["bob"]),
        "members": boards.create("club", post="members", members=["bob"], moderators=["mod"]),
    }
    for i in range(1, 4):
        boards.post(made["general"], post(i), user="bob")
    return cfg, store, boards, made


async def with_bridge(cfg, fn):  # type: ignore[no-untyped-def]
    async with running_imap(cfg) as port:
        return await trio.to_thread.run_sync(fn, port)


def login(port: int, user: str) -> RawIMAP:
    c = RawIMAP(port)
    c.ok(f"LOGIN {user} {user}-pw")
    return c


async def test_namespace_list_and_private_boards(site) -> None:  # type: ignore[no-untyped-def]
    cfg, _store, _boards, _made = site

    def client(port: int) -> None:
        a = login(port, "alice")
        assert a.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL (("Bboards/" "/"))\r\n']
        listed = {ln.split(b'"/" ')[1].strip(): ln for ln in a.ok('LIST "" "Bboards*"')}
        assert set(listed) == {b"Bboards", b"Bboards/andrew", b"Bboards/andrew/general",
                               b"Bboards/org", b"Bboards/org/acm", b"Bboards/org/acm/announce",
                               b"Bboards/club"}  # not staff.private: alice may not read it
        assert b"\\Noselect" in listed[b"Bboards/andrew"]
        assert b"\\HasNoChildren" in listed[b"Bboards/andrew/general"]
        top = a.ok('LIST "" "%"')
        assert any(b'"Bboards"' in ln or b" Bboards\r\n" in ln for ln in top)
        assert not any(b"andrew" in ln for ln in top)
        # A board alice may not read is as absent as one that does not exist.
        for name in ("Bboards/staff/private", "Bboards/no/such", "Bboards/Andrew/General",
                     "Bboards/andrew", "Bboards"):
            _, done = a.command(f'SELECT "{name}"')
            assert b"NO [NONEXISTENT]" in done, (name, done)
        _, done = a.command('STATUS "Bboards/staff/private" (MESSAGES)')
        assert b"NO [NONEXISTENT]" in done
        b = login(port, "bob")
        assert any(b"Bboards/staff/private" in ln for ln in b.ok('LIST "" "*"'))
        b.ok('SELECT "Bboards/staff/private"')
        a.close()
        b.close()

    await with_bridge(cfg, client)


async def test_seen_and_flags_are_per_user(site) -> None:  # type: ignore[no-untyped-def]
    cfg, _store, _boards, _made = site
    name = '"Bboards/andrew/general"'

    def client(port: int) -> None:
        a, b = login(port, "alice"), login(port, "bob")
        sel = a.ok(f"SELECT {name}")
        assert b"* 3 EXISTS\r\n" in sel and any(b"[UNSEEN 1]" in ln for ln in sel)
        assert any(b"[NOMODSEQ]" in ln for ln in sel)
        b.ok(f"SELECT {name}")
        # alice reads post 2: \Seen for her only.
        got = a.ok("UID FETCH 2 (BODY[])")
        assert b"body 2" in got[0] and b"\\Seen" in got[0]
        a.ok("UID STORE 3 +FLAGS.SILENT (\\Flagged $Later)")
        assert flags_of(a.ok("UID FETCH 1:* (FLAGS)")) == {
            1: set(), 2: {"\\Seen"}, 3: {"\\Flagged", "$Later"}}
        assert flags_of(b.ok("UID FETCH 1:* (FLAGS)")) == {1: set(), 2: set(), 3: set()}
        assert a.ok("UID SEARCH UNSEEN") == [b"* SEARCH 1 3\r\n"]
        assert b.ok("UID SEARCH UNSEEN") == [b"* SEARCH 1 2 3\r\n"]
        assert a.ok("SEARCH FLAGGED KEYWORD $Later") == [b"* SEARCH 3\r\n"]
        assert a.ok(f"STATUS {name} (MESSAGES UNSEEN)") == [
            b"* STATUS Bboards/andrew/general (MESSAGES 3 UNSEEN 2)\r\n"]
        assert b.ok(f"STATUS {name} (MESSAGES UNSEEN)") == [
            b"* STATUS Bboards/andrew/general (MESSAGES 3 UNSEEN 3)\r\n"]
        # bob marks everything seen; alice's view does not move.
        b.ok("STORE 1:* +FLAGS.SILENT (\\Seen)")
        assert b.ok("SEARCH UNSEEN") == [b"* SEARCH\r\n"]
        assert flags_of(a.ok("UID FETCH 1:* (FLAGS)"))[1] == set()
        # A second session of alice's hears of her first session's change.
        a2 = login(port, "alice")
        a2.ok(f"EXAMINE {name}")
        a.ok("UID STORE 1 +FLAGS.SILENT (\\Answered)")
        assert flags_of(a2.ok("NOOP")) == {1: {"\\Answered"}}
        for c in (a, a2, b):
            c.close()

    await with_bridge(cfg, client)


async def test_flags_agree_across_two_bridges_and_wake_idle(
        make_config: MakeConfig, site) -> None:  # type: ignore[no-untyped-def]
    cfg, _store, boards, made = site
    cfg2 = plaintext(make_config(host="h2"))  # same store, another host's cache dir
    name = '"Bboards/andrew/general"'

    async with running_imap(cfg) as p1, running_imap(cfg2) as p2:
        def client() -> None:
            a1, a2 = login(p1, "alice"), login(p2, "alice")
            a1.ok(f"SELECT {name}")
            a2.ok(f"SELECT {name}")
            a2.send(b"i1 IDLE\r\n")
            assert a2.line().startswith(b"+ ")
            t0 = time.monotonic()
            a1.ok("UID STORE 2 +FLAGS.SILENT (\\Seen)")
            line = a2.line()
            assert re.match(rb"\* 2 FETCH \(FLAGS \(\\Seen\) UID 2\)", line), line
            flag_latency = time.monotonic() - t0
            boards.post(made["general"], post(4), user="bob")
            assert a2.line() == b"* 4 EXISTS\r\n"
            a2.send(b"DONE\r\n")
            assert a2.line().startswith(b"i1 OK")
            assert flag_latency < 5.0, flag_latency
            f1 = flags_of(a1.ok("UID FETCH 1:* (FLAGS)"))
            assert f1 == flags_of(a2.ok("UID FETCH 1:* (FLAGS)"))
            assert f1 == {1: set(), 2: {"\\Seen"}, 3: set(), 4: set()}
            a1.close()
            a2.close()

        await trio.to_thread.run_sync(client)


async def test_subscribe_lsub_and_list_subscribed(site) -> None:  # type: ignore[no-untyped-def]
    cfg, store, boards, _made = site

    def client(port: int) -> None:
        a = login(port, "alice")
        a.ok('SUBSCRIBE "Bboards/andrew/general"')
        a.ok('SUBSCRIBE "Bboards/not/yet"')  # IMAP allows names that do not exist
        _, done = a.command('SUBSCRIBE "Bboards/Bad Name"')
        assert b"NO [NONEXISTENT]" in done
        lsub = a.ok('LSUB "" "Bboards/*"')
        assert {ln.split(b'"/" ')[1].strip() for ln in lsub} == {
            b"Bboards/andrew/general", b"Bboards/not/yet"}
        assert any(b" INBOX" in ln for ln in a.ok('LSUB "" "*"'))  # personal ones too
        subscribed = a.ok('LIST (SUBSCRIBED) "" "Bboards/*"')
        assert len(subscribed) == 1 and b"Bboards/andrew/general" in subscribed[0]
        a.ok('UNSUBSCRIBE "Bboards/andrew/general"')
        assert not any(b"general" in ln for ln in a.ok('LSUB "" "*"'))
        a.close()

    await with_bridge(cfg, client)
    # The same per-user state the command line reads.
    assert boards.user_state("alice").subscriptions() == ["not.yet"]


async def test_append_and_copy_post_under_the_policy(site) -> None:  # type: ignore[no-untyped-def]
    cfg, store, boards, made = site

    def client(port: int) -> None:
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login("alice", "alice-pw")
        # Open board: published at once, with APPENDUID, flags set for alice alone.
        typ, data = c.append('"Bboards/andrew/general"', "(\\Flagged)", None, post(10))
        assert typ == "OK" and b"[APPENDUID " in data[0], data
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        assert uid == 4
        # Moderated board: accepted, waiting, so no UID to give.
        typ, data = c.append('"Bboards/org/acm/announce"', None, None, post(11, "announce"))
        assert typ == "OK" and b"APPENDUID" not in data[0] and b"moderator" in data[0]
        # Members only, alice is none: refused, nothing posted.
        typ, data = c.append('"Bboards/club"', None, None, post(12, "club"))
        assert typ == "NO" and b"[NOPERM]" in data[0]
        # COPY from her INBOX posts too.
        c.append("INBOX", None, None, post(13, "inbox"))
        r = login(port, "alice")
        r.ok("SELECT INBOX")
        _, done = r.command('UID COPY 1 "Bboards/andrew/general"')
        assert re.match(rb"r\d+ OK \[COPYUID \d+ 1 5\]", done), done
        r.close()
        c.select('"Bboards/andrew/general"')
        typ, data = c.uid("FETCH", "4:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        got = b" ".join(x[0] + x[1] if isinstance(x, tuple) else x for x in data)
        assert b"andrew.general post 10" in got and b"inbox post 13" in got
        c.logout()
        b = login(port, "bob")
        b.ok('SELECT "Bboards/andrew/general"')
        assert flags_of(b.ok("UID FETCH 4 (FLAGS)")) == {4: set()}  # alice's \Flagged is hers
        b.close()

    await with_bridge(cfg, client)
    assert len(boards.pending(made["announce"])) == 1
    assert [p.uid for p in boards.posts(made["announce"])] == []
    assert [p.uid for p in boards.posts(made["members"])] == []
    # Approved, the post shows through IMAP.
    boards.approve(made["announce"], boards.pending(made["announce"])[0].uid, moderator="mod")

    def after(port: int) -> None:
        a = login(port, "alice")
        sel = a.ok('EXAMINE "Bboards/org/acm/announce"')
        assert b"* 1 EXISTS\r\n" in sel
        a.close()

    await with_bridge(cfg, after)


async def test_only_moderators_expunge(site) -> None:  # type: ignore[no-untyped-def]
    cfg, _store, boards, made = site
    boards.update("andrew.general", moderators=["mod"])
    name = '"Bboards/andrew/general"'

    def client(port: int) -> None:
        a, m = login(port, "alice"), login(port, "mod")
        a.ok(f"SELECT {name}")
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        _, done = a.command("EXPUNGE")
        assert b"NO [NOPERM]" in done
        _, done = a.command("UID MOVE 2 INBOX")
        assert b"NO [NOPERM]" in done
        assert a.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)\r\n"]
        a.ok("CLOSE")  # no implicit expunge for her, and no error
        m.ok(f"SELECT {name}")
        assert m.ok("EXPUNGE") == []  # alice's \Deleted is not the moderator's
        m.ok("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        assert m.ok("EXPUNGE") == [b"* 2 EXPUNGE\r\n"]
        assert m.ok("UID MOVE 3 INBOX")[-1] == b"* 2 EXPUNGE\r\n"
        a.ok(f"SELECT {name}")
        assert flags_of(a.ok("UID FETCH 1:* (FLAGS)")) == {1: {"\\Deleted"}}
        a.close()
        m.close()

    await with_bridge(cfg, client)
    assert [p.uid for p in boards.posts(made["general"])] == [1]


async def test_namespace_cannot_be_changed_and_modseq_is_refused(site) -> None:  # type: ignore[no-untyped-def]
    cfg, _store, _boards, _made = site

    def client(port: int) -> None:
        a = login(port, "alice")
        for cmd in ('CREATE "Bboards/mine"', 'CREATE Bboards', 'CREATE "Bboards/"',
                    'DELETE "Bboards/andrew/general"', "DELETE Bboards",
                    'RENAME "Bboards/andrew/general" "Bboards/other"'):
            _, done = a.command(cmd)
            assert b"NO [NOPERM]" in done, (cmd, done)
        a.ok("CREATE Work")
        _, done = a.command('RENAME Work "Bboards/work"')
        assert b"NO [NOPERM]" in done
        a.ok("ENABLE CONDSTORE")
        a.ok('SELECT "Bboards/andrew/general" (CONDSTORE)')
        for cmd in ("FETCH 1 (MODSEQ)", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
                    "STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)", "SEARCH MODSEQ 1"):
            _, done = a.command(cmd)
            assert b" BAD " in done, (cmd, done)
        # FLAGS alone answers without MODSEQ (there is none on a board).
        got = a.ok("STORE 1 +FLAGS (\\Seen)")
        assert got == [b"* 1 FETCH (FLAGS (\\Seen))\r\n"], got
        # A mailbox keeps CONDSTORE in the same session.
        sel = a.ok("SELECT INBOX (CONDSTORE)")
        assert any(b"HIGHESTMODSEQ" in ln for ln in sel)
        a.close()

    await with_bridge(cfg, client)
