"""QRESYNC, the ENVELOPE/BODYSTRUCTURE cache in the local index, and IDLE
sessions sharing one watcher: real bridges, raw clients checking the wire."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from ams.index import Index
from ams.store import FlagOp, NewMessage, UserRegistry
from tests.conftest import MakeConfig
from tests.imap_helpers import RawIMAP, bridge_process, running_imap
from tests.mx_helpers import add_users
from tests.test_imap_bridge import in_thread, multipart, seed, site


def _code(lines: list[bytes], name: bytes) -> int:
    for ln in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", ln)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


async def test_qresync_select_fetch_and_vanished(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 10)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")

    def client(port: int) -> None:
        a = RawIMAP(port)
        a.ok("LOGIN alice alice-pw")
        assert any(b"ENABLED QRESYNC" in ln for ln in a.ok("ENABLE QRESYNC"))
        sel = a.ok("SELECT INBOX")
        uv, m0 = _code(sel, b"UIDVALIDITY"), _code(sel, b"HIGHESTMODSEQ")

        # Another host expunges 3 and 4 and flags 7.
        inbox.expunge([3, 4])
        inbox.store_flags(FlagOp.ADD, ["\\Flagged"], [7])

        b = RawIMAP(port)
        b.ok("LOGIN alice alice-pw")
        b.ok("ENABLE QRESYNC")
        got = b.ok(f"SELECT INBOX (QRESYNC ({uv} {m0} 1:10))")
        assert b"* VANISHED (EARLIER) 3:4\r\n" in got, got
        fetches = [ln for ln in got if b" FETCH " in ln]
        assert len(fetches) == 1, got
        assert re.fullmatch(rb"\* 5 FETCH \(UID 7 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n",
                            fetches[0]), fetches

        # Known UIDs left out: every vanished UID below UIDNEXT is listed.
        got = b.ok(f"SELECT INBOX (QRESYNC ({uv} {m0}))")
        assert b"* VANISHED (EARLIER) 3:4\r\n" in got, got
        # A known-UID set names only what the client has.
        got = b.ok(f"SELECT INBOX (QRESYNC ({uv} {m0} 4:10))")
        assert b"* VANISHED (EARLIER) 4\r\n" in got, got
        # Another UIDVALIDITY: the client's cache is void; no resync data.
        got = b.ok(f"SELECT INBOX (QRESYNC ({uv + 1} {m0}))")
        assert not any(b"VANISHED" in ln or b"FETCH" in ln for ln in got), got

        got = b.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
        assert got[0] == b"* VANISHED (EARLIER) 3:4\r\n", got
        assert len(got) == 2 and b"UID 7 " in got[1] and b"MODSEQ" in got[1], got

        # The session selected before: VANISHED replaces EXPUNGE, and flag
        # news carries MODSEQ.
        got = a.ok("NOOP")
        assert b"* VANISHED 3:4\r\n" in got and not any(b"EXPUNGE" in ln for ln in got), got
        assert any(re.search(rb"FETCH \(FLAGS \(\\Flagged\) UID 7 MODSEQ \(\d+\)\)", ln)
                   for ln in got), got
        for c in (a, b):
            c.ok("LOGOUT")
            c.close()

    async with running_imap(cfg) as port:
        with trio.fail_after(60):
            await in_thread(client, port)


async def test_qresync_needs_enable(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 2)

    def client(port: int) -> bytes:
        c = RawIMAP(port)
        c.ok("LOGIN alice alice-pw")
        _, done = c.command("SELECT INBOX (QRESYNC (1 1))")
        c.close()
        return done

    async with running_imap(cfg) as port:
        with trio.fail_after(30):
            done = await in_thread(client, port)
    assert b" BAD " in done


def _fetch_all(port: int, items: str) -> list[bytes]:
    c = RawIMAP(port)
    c.ok("LOGIN alice alice-pw")
    c.ok("SELECT INBOX")
    out = c.ok(f"FETCH 1:* ({items})")
    c.ok("LOGOUT")
    c.close()
    return out


def test_envelope_cache_is_exact_and_follows_the_log(make_config: MakeConfig,
                                                     tmp_path: Path) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 3)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    inbox.append([NewMessage(multipart(), internal_date=1_700_000_100)])
    items = "ENVELOPE BODYSTRUCTURE BODY"

    with bridge_process(cfg, tmp_path / "a.toml") as port:
        first = _fetch_all(port, items)      # parsed, then cached
        second = _fetch_all(port, items)     # from the cache
    assert len(first) == 4 and first == second
    assert b"=?utf-8?" in first[3] or b"=?UTF-8?" in first[3]  # the encoded-word as sent

    def cached(uid: int) -> dict[bytes, bytes | None]:
        with Index(cfg) as ix, ix.view(inbox.head().id) as view:
            return {k: view.cached(uid, k) for k in (b"E", b"S", b"B")}

    assert all(v is not None for v in cached(4).values())

    # Compaction rebuilds the index under a new mailbox number: the cache
    # moves with it, and answers stay the same.
    inbox.expunge([1])
    inbox.compact()
    with bridge_process(cfg, tmp_path / "b.toml") as port:
        third = _fetch_all(port, items)
    assert third == [re.sub(rb"^\* (\d+)", lambda m: b"* %d" % (int(m.group(1)) - 1), ln)
                     for ln in first[1:]]
    assert cached(1) == {b"E": None, b"S": None, b"B": None}
    assert all(v is not None for v in cached(4).values())

    # An expunge applied from the log tail drops the message's entries.
    inbox.expunge([4])
    with bridge_process(cfg, tmp_path / "c.toml") as port:
        assert len(_fetch_all(port, "UID")) == 2
    assert cached(4) == {b"E": None, b"S": None, b"B": None}


async def test_many_idle_sessions_hear_of_one_delivery(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 1)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    sessions = 40

    def idle(port: int) -> RawIMAP:
        c = RawIMAP(port)
        c.ok("LOGIN alice alice-pw")
        c.ok("SELECT INBOX")
        c.send(b"i IDLE\r\n")
        assert c.line().startswith(b"+ ")
        return c

    def deliver_and_listen(clients: list[RawIMAP]) -> list[bytes]:
        inbox.append([NewMessage(b"Subject: x\r\n\r\nx\r\n", internal_date=1_700_000_500)])
        heard = [c.line() for c in clients]  # one thread: the bridge keeps its own
        for c in clients:
            c.send(b"DONE\r\n")
            assert c.line().startswith(b"i OK")
            c.close()
        return heard

    async with running_imap(cfg) as port:
        with trio.fail_after(60):
            clients = [await in_thread(idle, port) for _ in range(sessions)]
            lines = await in_thread(deliver_and_listen, clients)
    assert lines == [b"* 2 EXISTS\r\n"] * sessions


def test_first_without_a_flag_reads_one_bit(make_config: MakeConfig) -> None:
    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 12)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    with Index(cfg) as ix:
        ix.update(inbox)
        with ix.view(inbox.head().id) as view:
            assert view.first_without("\\Seen") == 1  # the flag was never used
        # Enough other flags first that \Seen lands in the mask's second byte.
        inbox.store_flags(FlagOp.ADD, [f"$k{i}" for i in range(9)], [1])
        inbox.store_flags(FlagOp.ADD, ["\\Seen"], list(range(1, 11)))
        ix.update(inbox)
        with ix.view(inbox.head().id) as view:
            assert view.first_without("\\Seen") == 11
        inbox.store_flags(FlagOp.ADD, ["\\Seen"], [11, 12])
        ix.update(inbox)
        with ix.view(inbox.head().id) as view:
            assert view.first_without("\\Seen") is None


def test_sessions_in_step_share_one_uid_array(make_config: MakeConfig) -> None:
    from ams.imap._backend import Account

    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 5)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    with Index(cfg) as ix:
        a = Account(store, ix, "alice").select("INBOX")
        b = Account(store, ix, "alice").select("INBOX")
        assert a.uids is b.uids and list(a.uids) == [1, 2, 3, 4, 5]
        inbox.append([NewMessage(b"Subject: n\r\n\r\nn\r\n", internal_date=1_700_000_600)])
        inbox.expunge([2])
        ch = a.refresh()
        assert ch.expunged == [2] and ch.exists == 5 and list(a.uids) == [1, 3, 4, 5, 6]
        assert list(b.uids) == [1, 2, 3, 4, 5]  # b has not been told: its view stays
        b.refresh(allow_expunge=False)           # held back (RFC 3501 §7.4.1)
        assert list(b.uids) == [1, 2, 3, 4, 5]
        b.refresh()
        assert a.uids is b.uids


def test_fetch_skips_a_message_expunged_but_not_yet_reported(make_config: MakeConfig) -> None:
    """The dense FETCH path zips the index's values with the session's UIDs
    only when the counts prove them the same set; an expunge the session
    has not been told of must fall back to matching, not shift flags."""
    from ams.imap._backend import Account
    from ams.imap._fetch import FetchPlan, fetch_chunk
    from ams.protocols.imap import Fetch, SequenceSet
    from ams.protocols.imap._commands import FetchAttribute

    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 6)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    inbox.store_flags(FlagOp.ADD, ["\\Flagged"], [4])
    with Index(cfg) as ix:
        sel = Account(store, ix, "alice").select("INBOX")
        inbox.expunge([3])
        sel.refresh(allow_expunge=False)
        assert list(sel.uids) == [1, 2, 3, 4, 5, 6]
        pairs = [(i + 1, u) for i, u in enumerate(sel.uids)]
        for attrs, want in (
                (("UID", "FLAGS"), b"* 4 FETCH (UID 4 FLAGS (\\Flagged))\r\n"),
                (("FLAGS", "RFC822.SIZE"), b"* 4 FETCH (FLAGS (\\Flagged) RFC822.SIZE ")):
            ev = Fetch(tag="a", sequence_set=SequenceSet.parse(b"1:*"),
                       attributes=tuple(FetchAttribute(a) for a in attrs))
            got = bytes(fetch_chunk(sel, pairs, FetchPlan(ev, readonly=True, utf8=False,
                                                          condstore=False), None).data)
            lines = got.splitlines(keepends=True)
            assert [ln.split()[1] for ln in lines] == [b"1", b"2", b"4", b"5", b"6"]
            assert lines[2].startswith(want), lines


def test_whole_run_fetch_answers_as_the_per_message_walk(make_config: MakeConfig) -> None:
    """The one-format answer for a run of consecutive messages (what
    ``UID FETCH 1:* (FLAGS)`` takes) must give exactly the bytes of the walk
    message by message, for every index-only item list, with flags that
    differ in length (none, one, many, keywords); and with an expunge the
    session has not yet heard of, it must step aside."""
    from ams.imap._backend import Account
    from ams.imap._fetch import FetchPlan, SeqRun, fetch_chunk
    from ams.protocols.imap import Fetch, SequenceSet
    from ams.protocols.imap._commands import FetchAttribute

    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 40)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    inbox.store_flags(FlagOp.ADD, ["\\Seen"], list(range(1, 41, 2)))
    inbox.store_flags(FlagOp.ADD, ["\\Flagged", "$Important"], list(range(1, 41, 3)))
    inbox.store_flags(FlagOp.ADD, [f"kw{i}" for i in range(12)], [7, 8])
    with Index(cfg) as ix:
        sel = Account(store, ix, "alice").select("INBOX")

        def both(attrs: tuple[str, ...], condstore: bool, lo: int, hi: int) -> tuple[bytes, bytes]:
            ev = Fetch(tag="a", sequence_set=SequenceSet.parse(b"1:*"), uid=True,
                       attributes=tuple(FetchAttribute(a) for a in attrs))
            plan = FetchPlan(ev, readonly=True, utf8=False, condstore=condstore)
            assert plan.template is not None
            run = SeqRun(lo + 1, sel.uids[lo:hi])
            fast = bytes(fetch_chunk(sel, run, plan, None).data)
            slow = bytes(fetch_chunk(sel, list(run), plan, None).data)
            return fast, slow

        for attrs in (("UID", "FLAGS"), ("FLAGS", "UID"), ("UID", "RFC822.SIZE"),
                      ("UID", "FLAGS", "RFC822.SIZE", "MODSEQ"), ("FLAGS", "FLAGS", "UID")):
            for condstore in (False, True):
                for lo, hi in ((0, 40), (5, 9), (39, 40)):
                    fast, slow = both(attrs, condstore, lo, hi)
                    assert fast == slow, (attrs, condstore, lo, hi)
                    assert fast.count(b"\r\n") == hi - lo
        fast, _ = both(("UID", "FLAGS"), False, 6, 8)
        assert b"kw11" in fast and b"* 8 FETCH (UID 8 FLAGS (" in fast
        inbox.expunge([20])
        sel.refresh(allow_expunge=False)
        fast, slow = both(("UID", "FLAGS"), False, 0, 40)
        assert fast == slow and fast.count(b"\r\n") == 39 and b"UID 20 " not in fast


def test_search_keeps_text_spans_and_answers_the_same_from_them(
        make_config: MakeConfig) -> None:
    """BODY and TEXT walk a message's MIME structure once per host: the
    first search keeps where its text parts lie in the index cache, the
    next reads them from there, with the same answers.  Messages the raw
    octets already rule out (plain ASCII, for an ASCII word) are not walked."""
    from ams.imap._backend import Account
    from ams.imap._fetch import CACHE_VERSION, TEXT_SPANS, FetchCache, search_matches
    from ams.protocols.imap._commands import And, BodyKey, Not, TextKey

    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 3)
    inbox = UserRegistry(store).mailboxes("alice").open("INBOX")
    inbox.append([NewMessage(multipart(), internal_date=1_700_000_100),
                  NewMessage(multipart().replace(b"Alice", b"Zora"), internal_date=1_700_000_200)])
    keys = [BodyKey("schöne grüße"), TextKey("köln"), BodyKey("zora"), TextKey("body 2"),
            And((TextKey("alice"), Not(BodyKey("nothing like this")))), BodyKey("binary")]
    with Index(cfg) as ix:
        sel = Account(store, ix, "alice").select("INBOX")

        def kept() -> dict[int, bytes]:
            with ix.view(sel.log_id) as view:
                return {u: got for u in sel.uids
                        if (got := view.cached(u, TEXT_SPANS)) is not None}

        assert kept() == {}
        # An ASCII word: the plain ASCII notes are ruled out by their octets.
        assert [u for _, u in search_matches(sel, BodyKey("zora"), FetchCache())] == [5]
        assert sorted(kept()) == [4, 5]
        first = [search_matches(sel, k, FetchCache()) for k in keys]
        spans = kept()
        assert sorted(spans) == [1, 2, 3, 4, 5]
        assert all(v[:1] == CACHE_VERSION for v in spans.values())
        again = [search_matches(sel, k, FetchCache()) for k in keys]
        assert again == first and kept() == spans
        # TEXT "alice" is in every To:; the attachment is not text, so not searched.
        assert [[u for _, u in got] for got in first] == [[4, 5], [4, 5], [5], [2],
                                                          [1, 2, 3, 4, 5], []]


def test_the_idle_poll_setting_paces_the_watcher(make_config: MakeConfig) -> None:
    import dataclasses

    from ams.config import ImapConfig
    from ams.imap._server import Bridge

    cfg, _ = site(make_config)
    bridge = Bridge(dataclasses.replace(cfg, imap=ImapConfig(idle_poll=0.05)))
    try:
        assert bridge.watcher.interval == 0.05
    finally:
        bridge.close()
    assert ImapConfig().idle_poll == 0.2


def test_seq_runs_behave_as_lists_of_pairs() -> None:
    from array import array

    from ams.imap._fetch import SeqRun

    uids = array("I", [3, 5, 9, 10, 11, 40])
    run = SeqRun(4, uids)
    pairs = [(4 + i, u) for i, u in enumerate(uids)]
    assert list(run) == pairs and len(run) == 6
    assert run[0] == pairs[0] and run[-1] == pairs[-1] and run[2] == pairs[2]
    for lo, hi in ((0, 2), (2, 6), (1, 100), (5, 3), (-2, None)):
        assert list(run[lo:hi]) == pairs[lo:hi]
    with pytest.raises(IndexError):
        run[6]


def test_a_mailbox_selected_again_reuses_its_uid_array(make_config: MakeConfig) -> None:
    import gc
    import weakref

    from ams.imap._backend import Account

    cfg, store = site(make_config)
    add_users(store, "alice")
    seed(store, "alice", 5)
    with Index(cfg) as ix:
        a = Account(store, ix, "alice").select("INBOX")
        first = weakref.ref(a.uids)
        del a
        gc.collect()
        assert first() is not None  # kept though no session holds it
        b = Account(store, ix, "alice").select("INBOX")
        assert b.uids is first() and list(b.uids) == [1, 2, 3, 4, 5]
