"""The IMAP bridge: the trio driver over the sans-IO core and the store.

One task per connection runs the core's loop (ams.protocols.imap): bytes in,
events out, each command handled by a method here that turns it into calls
on the session's :class:`~ams.imap._backend.Account` / ``Selected`` (in a
worker thread: they do filesystem and LMDB work) and into responses.

- Authentication: LOGIN and AUTHENTICATE PLAIN against the user registry.
  Each failure is answered after a delay that doubles per recent failure of
  that client address and of that user name (up to ``MAX_DELAY``), so
  guessing is slow without locking anyone out.  Cleartext login is refused
  (LOGINDISABLED) unless ``tls.allow_plaintext_auth`` or TLS is active.
- New mail: a session polls its selected mailbox's log tail while it is in
  IDLE and at every command, never by listing a directory.
- Autologout after ``limits.imap_autologout`` seconds without a command
  (RFC 3501: at least 30 minutes, the default), IDLE included.
- Any unexpected exception in a handler is logged and answered ``NO
  [SERVERBUG]``; the client never sees exception text.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import trio

from ams.config import Config
from ams.errors import AlreadyExists, AMSError, NotFound, UsageError
from ams.imap._backend import BOARDS_PREFIX, SYSTEM_FLAGS, Account, Changes, Selected
from ams.imap._fetch import (
    FetchCache,
    FetchPlan,
    FetchResult,
    SeqRun,
    fetch_chunk,
    search_matches,
)
from ams.imap._watch import Watched, Watcher
from ams.index import Index
from ams.protocols.imap import (
    DEFAULT_EXTENSIONS,
    NEED_DATA,
    PAUSED,
    Append,
    Authenticate,
    Check,
    Close,
    ConnectionClosed,
    Copy,
    Create,
    Delete,
    Expunge,
    Fetch,
    Id,
    Idle,
    IdleDone,
    IMAPServerConnection,
    List,
    Login,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    RemoteProtocolError,
    Rename,
    Search,
    Select,
    SequenceSet,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from ams.protocols.imap import responses as R
from ams.store import FlagOp, UserRegistry
from ams.store import Store as SharedStore
from ams.throttle import PASSWORD_CHECKS, Throttle
from bboard import NotPermitted

log = logging.getLogger(__name__)

RECV_SIZE = 65536
#: Messages per worker-thread hop in FETCH; responses leave between hops.
FETCH_CHUNK = 2000
#: How many times FETCH_CHUNK a FETCH answered from the index alone takes per hop.
INDEX_ONLY_CHUNKS = 5
PERMANENT_FLAGS = (*SYSTEM_FLAGS, "\\*")
#: What the bridge advertises: only what it really implements.
EXTENSIONS = DEFAULT_EXTENSIONS
_OPS = {"replace": FlagOp.REPLACE, "add": FlagOp.ADD, "remove": FlagOp.REMOVE}


class Bridge:
    """What every connection of one bridge process shares."""

    def __init__(self, config: Config, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.store = SharedStore(config)
        self.store.check()
        self.users = UserRegistry(self.store)
        self.index = Index(config)
        self.ssl_context = ssl_context
        self.throttle = Throttle()
        self.cache = FetchCache()
        self.watcher = Watcher(self.index, config.imap.idle_poll)
        self.password_checks = trio.CapacityLimiter(PASSWORD_CHECKS)

    def close(self) -> None:
        self.index.close()

    async def handle(self, stream: trio.abc.Stream) -> None:
        tls = isinstance(stream, trio.SSLStream)
        if tls:
            try:
                with trio.fail_after(30):
                    await stream.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError):
                await trio.aclose_forcefully(stream)
                return
        session = Session(self, stream, _peer(stream), tls=tls)
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            log.info("%s: connection lost (%s)", session.peer, type(e).__name__)
        finally:
            await trio.aclose_forcefully(session.stream)


class Session:
    def __init__(self, bridge: Bridge, stream: trio.abc.Stream, peer: str,
                 *, tls: bool = False) -> None:
        self.bridge = bridge
        self.stream: trio.abc.Stream = stream
        self.peer = peer
        self.conn = IMAPServerConnection(
            tls_available=bridge.ssl_context is not None, tls_active=tls,
            allow_plaintext_auth=bridge.config.tls.allow_plaintext_auth,
            max_literal=bridge.config.limits.max_message_bytes, extensions=EXTENSIONS)
        self.account: Account | None = None
        self.selected: Selected | None = None
        self.autologout = bridge.config.limits.imap_autologout

    async def thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def run(self) -> None:
        self.conn.greeting()
        await self.flush()
        while True:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError:
                await self.flush()
                return
            if event is NEED_DATA:
                await self.flush()
                with trio.move_on_after(self.autologout) as scope:
                    data = await self.stream.receive_some(RECV_SIZE)
                if scope.cancelled_caught:
                    self.conn.bye("Autologout; idle for too long")
                    await self.flush()
                    return
                self.conn.receive_data(bytes(data))
            elif event is PAUSED:  # pragma: no cover - every command is handled below
                raise AssertionError("paused without a pending command")
            elif isinstance(event, StartTLS):
                await self.flush()
                assert self.bridge.ssl_context is not None
                self.stream = trio.SSLStream(self.stream, self.bridge.ssl_context,
                                             server_side=True)
                await self.stream.do_handshake()
                self.conn.tls_started()
            elif isinstance(event, ConnectionClosed):
                await self.flush()
                return
            elif isinstance(event, Idle):
                if not await self.idle(event):
                    return
            else:
                await self.command(event)

    async def command(self, ev: Any) -> None:
        handler = getattr(self, "do_" + type(ev).__name__.lower(), None)
        try:
            if handler is None:
                self.conn.complete(ev.tag, "NO", "Not supported", code="CANNOT")
                return
            await handler(ev)
        except NotPermitted as e:
            self.conn.complete(ev.tag, "NO", _one_line(str(e)), code="NOPERM")
        except NotFound as e:
            code = "TRYCREATE" if "[TRYCREATE]" in str(e) else "NONEXISTENT"
            self.conn.complete(ev.tag, "NO", "No such mailbox", code=code)
        except AlreadyExists:
            self.conn.complete(ev.tag, "NO", "Mailbox exists already", code="ALREADYEXISTS")
        except UsageError as e:
            self.conn.complete(ev.tag, "NO", _one_line(str(e)), code="CANNOT")
        except AMSError as e:
            log.warning("%s: %s failed: %s", self.peer, type(ev).__name__, e)
            self.conn.complete(ev.tag, "NO", "Temporary failure, try again", code="UNAVAILABLE")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("%s: %s failed", self.peer, type(ev).__name__)
            self.conn.complete(ev.tag, "NO", "Internal error", code="SERVERBUG")

    # -- authentication -------------------------------------------------------------------

    async def login(self, tag: str, user: str, password: str) -> None:
        name = user.lower()
        keys = (f"addr:{self.peer.rsplit(':', 1)[0]}", f"user:{name}")
        ok = await trio.to_thread.run_sync(self.bridge.users.verify_password, name, password,
                                           limiter=self.bridge.password_checks)
        if not ok:
            self.bridge.throttle.failed(*keys)
            await trio.sleep(self.bridge.throttle.delay(*keys))
            log.info("%s: failed login for %r", self.peer, name)
            self.conn.complete(tag, "NO", "Authentication failed", code="AUTHENTICATIONFAILED")
            return
        self.account = await self.thread(Account, self.bridge.store, self.bridge.index, name,
                                         self.bridge.users)
        log.info("%s: %s logged in", self.peer, name)
        self.conn.complete(tag, "OK", "Logged in")

    async def do_login(self, ev: Login) -> None:
        await self.login(ev.tag, ev.userid, ev.password)

    async def do_authenticate(self, ev: Authenticate) -> None:
        if ev.authzid and ev.authzid != ev.username:
            self.conn.complete(ev.tag, "NO", "Proxy login not allowed",
                               code="AUTHORIZATIONFAILED")
            return
        await self.login(ev.tag, ev.username, ev.password)

    # -- any state ----------------------------------------------------------------------------

    async def do_noop(self, ev: Noop | Check) -> None:
        await self.report_changes()
        self.conn.complete(ev.tag, "OK", f"{ev.command_name} completed")

    do_check = do_noop

    async def do_id(self, ev: Id) -> None:
        self.conn.send(R.id_response({"name": "AMS", "vendor": "AMS"}))
        self.conn.complete(ev.tag, "OK", "ID completed")

    async def do_namespace(self, ev: Namespace) -> None:
        self.conn.send(R.namespace([("", "/")], None, [(BOARDS_PREFIX + "/", "/")]))
        self.conn.complete(ev.tag, "OK", "NAMESPACE completed")

    # -- mailboxes ------------------------------------------------------------------------------

    def _account(self) -> Account:
        assert self.account is not None
        return self.account

    async def do_list(self, ev: List) -> None:
        acct = self._account()
        if ev.patterns == ("",):
            self.conn.send(R.list_response(["\\Noselect"], "/", ""))
            self.conn.complete(ev.tag, "OK", "LIST completed")
            return
        entries = await self.thread(acct.list)
        subscribed_only = "SUBSCRIBED" in ev.select_options
        for e in entries:
            if not any(_match(ev.reference + p, e.name) for p in ev.patterns):
                continue
            if subscribed_only and "\\Subscribed" not in e.attributes:
                continue
            attrs = [a for a in e.attributes
                     if a != "\\Subscribed" or subscribed_only
                     or "SUBSCRIBED" in ev.return_options]
            self.conn.send(R.list_response(attrs, "/", e.name))
        self.conn.complete(ev.tag, "OK", "LIST completed")

    async def do_lsub(self, ev: Lsub) -> None:
        names = await self.thread(self._account().subscriptions)
        for n in names:
            if _match(ev.reference + ev.pattern, n):
                self.conn.send(R.list_response([], "/", n, kind="LSUB"))
        self.conn.complete(ev.tag, "OK", "LSUB completed")

    async def do_create(self, ev: Create) -> None:
        await self.thread(self._account().create, ev.mailbox)
        self.conn.complete(ev.tag, "OK", "CREATE completed")

    async def do_delete(self, ev: Delete) -> None:
        if self.selected is not None and self.selected.name == ev.mailbox:
            self.conn.complete(ev.tag, "NO", "Mailbox is selected", code="INUSE")
            return
        await self.thread(self._account().delete, ev.mailbox)
        self.conn.complete(ev.tag, "OK", "DELETE completed")

    async def do_rename(self, ev: Rename) -> None:
        await self.thread(self._account().rename, ev.mailbox, ev.new_mailbox)
        self.conn.complete(ev.tag, "OK", "RENAME completed")

    async def do_subscribe(self, ev: Subscribe) -> None:
        await self.thread(self._account().subscribe, ev.mailbox, True)
        self.conn.complete(ev.tag, "OK", "SUBSCRIBE completed")

    async def do_unsubscribe(self, ev: Unsubscribe) -> None:
        await self.thread(self._account().subscribe, ev.mailbox, False)
        self.conn.complete(ev.tag, "OK", "UNSUBSCRIBE completed")

    async def do_status(self, ev: Status) -> None:
        st = await self.thread(self._account().status, ev.mailbox)
        self.conn.send(R.mailbox_status(ev.mailbox, {i: st[i] for i in ev.items if i in st}))
        self.conn.complete(ev.tag, "OK", "STATUS completed")

    async def do_append(self, ev: Append) -> None:
        date, tz = _internal_date(ev.internal_date)
        try:
            uidvalidity, uid = await self.thread(self._account().append, ev.mailbox, ev.message,
                                                 ev.flags, date, tz)
        except NotFound:
            self.conn.complete(ev.tag, "NO", "No such mailbox", code="TRYCREATE")
            return
        await self.report_changes()
        if uid is None:  # a post waiting for a bboard's moderator
            self.conn.complete(ev.tag, "OK", "APPEND completed; the post awaits a moderator")
            return
        self.conn.complete(ev.tag, "OK", "APPEND completed",
                           code=R.append_uid(uidvalidity, [uid]))

    # -- selecting ------------------------------------------------------------------------------

    async def do_select(self, ev: Select) -> None:
        self.selected = None
        sel = await self.thread(self._account().select, ev.mailbox, readonly=ev.read_only)
        self.selected = sel
        flags = await self.thread(sel.first_unseen)
        self.conn.send(R.flags(SYSTEM_FLAGS))
        self.conn.send(R.exists(sel.exists))
        self.conn.send(R.recent(0))
        if flags is not None:
            self.conn.send(_ok(R.unseen(flags), "First unseen"))
        self.conn.send(_ok(R.permanent_flags(() if sel.readonly else PERMANENT_FLAGS),
                           "Flags permitted"))
        self.conn.send(_ok(R.uidvalidity(sel.uidvalidity), "UIDs valid"))
        self.conn.send(_ok(R.uidnext(sel.uidnext), "Predicted next UID"))
        if sel.nomodseq:  # a bboard: per-user flags, no mod-sequences (RFC 7162 §3.1.2.2)
            self.conn.send(_ok(R.ResponseCode("NOMODSEQ"), "No permanent mod-sequences here"))
        else:
            self.conn.send(_ok(R.highest_modseq(sel.highest_modseq), "Highest"))
            if ev.qresync is not None and ev.qresync.uidvalidity == sel.uidvalidity:
                await self.resync(sel, ev.qresync)
        self.conn.complete(ev.tag, "OK", "SELECT completed",
                           code="READ-ONLY" if sel.readonly else "READ-WRITE")

    async def resync(self, sel: Selected, q: QResync) -> None:
        """SELECT's QRESYNC parameter (RFC 7162 §3.2.5): what vanished and what
        changed since the client's MODSEQ, within its known UIDs.

        VANISHED (EARLIER) lists every UID of the known set below UIDNEXT
        that no longer exists: a superset of those expunged after ``modseq``
        (the index keeps no expunge history), which a client ignores for
        UIDs it has already dropped.
        """
        top = sel.uidnext - 1
        spans = q.known_uids.resolve(top, clip=True) if q.known_uids else (range(1, top + 1),)
        gone = _gaps(sel.uids, spans)
        if gone is not None:
            self.conn.send(R.vanished(gone, earlier=True))
        changed = await self.thread(sel.changed_since, q.modseq)
        wanted = [(seq, m) for seq, m in changed
                  if any(m.uid in r for r in spans)]
        for seq, m in wanted:
            self.conn.send(R.fetch(seq, [("UID", m.uid), ("FLAGS", R.flag_atoms(sorted(m.flags))),
                                         ("MODSEQ", (m.modseq,))]))

    do_examine = do_select

    def _selected(self) -> Selected:
        assert self.selected is not None
        return self.selected

    async def do_close(self, ev: Close) -> None:
        sel = self._selected()
        if not sel.readonly and sel.may_expunge:
            await self.thread(sel.expunge)
        self.selected = None
        self.conn.complete(ev.tag, "OK", "CLOSE completed")

    async def do_unselect(self, ev: Unselect) -> None:
        self.selected = None
        self.conn.complete(ev.tag, "OK", "UNSELECT completed")

    async def report_changes(self, *, allow_expunge: bool = True) -> None:
        if self.selected is None:
            return
        ch: Changes = await self.thread(self.selected.refresh, allow_expunge=allow_expunge)
        if ch.expunged:
            if "QRESYNC" in self.conn.enabled:
                self.conn.send(R.vanished(ch.expunged_uids))
            else:
                for seq in ch.expunged:
                    self.conn.send(R.expunge(seq))
        if ch.exists is not None:
            self.conn.send(R.exists(ch.exists))
        self.send_flag_changes(ch.flags)
        if ch.uidvalidity_changed:
            self.conn.bye("Mailbox was recreated; please reselect")

    def send_flag_changes(self, changed: list[tuple[int, Any]], *, uid: bool = True) -> None:
        """Untagged FETCH (FLAGS UID [MODSEQ]) for messages whose flags changed."""
        condstore = "CONDSTORE" in self.conn.enabled and not self._selected().nomodseq
        for seq, m in changed:
            items: list[tuple[str, Any]] = [("FLAGS", R.flag_atoms(sorted(m.flags)))]
            if uid:
                items.append(("UID", m.uid))
            if condstore:
                items.append(("MODSEQ", (m.modseq,)))
            self.conn.send(R.fetch(seq, items))

    # -- selected state ---------------------------------------------------------------------------

    def _pairs(self, seqset: SequenceSet, uid: bool) -> Sequence[tuple[int, int]]:
        """(seq, UID) of the messages a sequence set names, in order."""
        sel = self._selected()
        uids = sel.uids
        if uid:
            spans = seqset.resolve(uids[-1] if uids else 0)
            out: list[tuple[int, int]] = []
            for r in spans:
                lo = bisect.bisect_left(uids, r.start)
                hi = bisect.bisect_left(uids, r.stop)
                if len(spans) == 1:  # one range (1:*): no tuple per message
                    return SeqRun(lo + 1, uids[lo:hi])
                out.extend(zip(range(lo + 1, hi + 1), uids[lo:hi], strict=True))
            return out  # resolve() gives sorted, merged ranges: no repeats
        spans = seqset.resolve(sel.exists, clip=True)
        if len(spans) == 1:
            r = spans[0]
            return SeqRun(r.start, uids[r.start - 1:r.stop - 1])
        return [(n, uids[n - 1]) for n in seqset.numbers(sel.exists, clip=True)]

    def _uids(self, seqset: SequenceSet, uid: bool) -> list[int]:
        return [u for _, u in self._pairs(seqset, uid)]

    def _refuse_modseq(self, tag: str, used: bool) -> bool:
        """BAD for a mod-sequence modifier on a NOMODSEQ mailbox (RFC 7162 §3.1.2.2)."""
        if used and self._selected().nomodseq:
            self.conn.complete(tag, "BAD", "This mailbox has no mod-sequences (NOMODSEQ)")
            return True
        return False

    def _poke(self, sel: Selected) -> None:
        """Wake this bridge's other sessions that show what ``sel`` changed."""
        self.bridge.watcher.poke(sel.flags_key or sel.log_id)

    async def do_fetch(self, ev: Fetch) -> None:
        sel = self._selected()
        if self._refuse_modseq(ev.tag, ev.changed_since is not None
                               or any(a.name == "MODSEQ" for a in ev.attributes)):
            return
        await self.report_changes(allow_expunge=ev.uid)
        pairs = self._pairs(ev.sequence_set, ev.uid)
        if ev.vanished:
            # QRESYNC (RFC 7162 §3.2.6): what in the set went away, first.
            gone = _gaps(sel.uids, _requested(ev.sequence_set, sel))
            if gone:
                self.conn.send(R.vanished(gone, earlier=True))
        plan = FetchPlan(ev, readonly=sel.readonly, utf8=self.conn.utf8,
                         condstore="CONDSTORE" in self.conn.enabled and not sel.nomodseq)
        others: list[tuple[int, Any]] = []
        # Index-only answers are ~40 octets and ~0.3 µs each: bigger chunks,
        # fewer thread hops.
        step = FETCH_CHUNK * (INDEX_ONLY_CHUNKS if plan.template is not None else 1)
        for i in range(0, len(pairs), step):
            got: FetchResult = await self.thread(fetch_chunk, sel, pairs[i:i + step],
                                                 plan, self.bridge.cache)
            if got.seen:
                # \Seen is in the responses: write it before they leave.
                await self.thread(sel.store, got.seen, FlagOp.ADD, ["\\Seen"])
                self._poke(sel)
                ch: Changes = await self.thread(sel.refresh, allow_expunge=False)
                mine = set(got.seen)
                others += [(seq, m) for seq, m in ch.flags if m.uid not in mine]
            if got.data:
                self.conn.send_encoded(bytes(got.data))
                await self.flush()
        self.send_flag_changes(others)
        self.conn.complete(ev.tag, "OK", "FETCH completed")

    async def do_store(self, ev: Store) -> None:
        sel = self._selected()
        if sel.readonly:
            self.conn.complete(ev.tag, "NO", "Mailbox is read-only", code="READ-ONLY")
            return
        if self._refuse_modseq(ev.tag, ev.unchanged_since is not None):
            return
        await self.report_changes(allow_expunge=ev.uid)
        uids = self._uids(ev.sequence_set, ev.uid)
        changed, refused = await self.thread(sel.store, uids, _OPS[ev.operation], ev.flags,
                                             unchanged_since=ev.unchanged_since)
        if changed:
            self._poke(sel)
        ch: Changes = await self.thread(sel.refresh, allow_expunge=False)
        if ev.silent:  # our own changes go unreported; other clients' are still news
            mine = set(changed)
            ch.flags = [(seq, m) for seq, m in ch.flags if m.uid not in mine]
        shown = {seq for seq, _ in ch.flags}
        if not ev.silent:
            for seq, m in await self.thread(sel.messages, uids):
                if seq not in shown:
                    ch.flags.append((seq, m))
        for seq, m in sorted(ch.flags, key=lambda x: x[0]):
            items: list[tuple[str, Any]] = [("FLAGS", R.flag_atoms(sorted(m.flags)))]
            if ev.uid or ev.unchanged_since is not None:
                items.append(("UID", m.uid))
            if ev.unchanged_since is not None:
                items.append(("MODSEQ", (m.modseq,)))
            self.conn.send(R.fetch(seq, items))
        code = R.modified(refused) if refused else None
        self.conn.complete(ev.tag, "OK", "STORE completed", code=code)

    async def do_search(self, ev: Search) -> None:
        sel = self._selected()
        if self._refuse_modseq(ev.tag, "CONDSTORE" in ev.extensions_used()):  # MODSEQ key
            return
        await self.report_changes(allow_expunge=ev.uid)
        found = await self.thread(search_matches, sel, ev.criteria, self.bridge.cache)
        numbers = [uid for seq, uid in found] if ev.uid else [seq for seq, uid in found]
        self.conn.send(R.search(numbers))
        self.conn.complete(ev.tag, "OK", "SEARCH completed")

    async def do_expunge(self, ev: Expunge) -> None:
        sel = self._selected()
        if sel.readonly:
            self.conn.complete(ev.tag, "NO", "Mailbox is read-only", code="READ-ONLY")
            return
        only = self._uids(ev.uid_set, True) if ev.uid_set is not None else None
        if await self.thread(sel.expunge, only):
            self.bridge.watcher.poke(sel.log_id)
        await self.report_changes()
        self.conn.complete(ev.tag, "OK", "EXPUNGE completed")

    async def do_copy(self, ev: Copy) -> None:
        sel = self._selected()
        uids = self._uids(ev.sequence_set, ev.uid)
        uidvalidity, src, dst = await self.thread(sel.copy_to, uids, ev.mailbox)
        code = R.copy_uid(uidvalidity, src, dst) if src else None
        self.conn.complete(ev.tag, "OK", "COPY completed", code=code)

    async def do_move(self, ev: Move) -> None:
        sel = self._selected()
        if sel.readonly:
            self.conn.complete(ev.tag, "NO", "Mailbox is read-only", code="READ-ONLY")
            return
        sel.check_expunge()  # before the copy: a MOVE that cannot remove must not copy
        uids = self._uids(ev.sequence_set, ev.uid)
        uidvalidity, src, dst = await self.thread(sel.copy_to, uids, ev.mailbox)
        moved = src or [u for _, u in await self.thread(sel.messages, uids)]
        if src:
            self.conn.send(_ok(R.copy_uid(uidvalidity, src, dst), "Moved"))
        if moved:
            await self.thread(sel.remove, moved)
            self.bridge.watcher.poke(sel.log_id)
        await self.report_changes()
        self.conn.complete(ev.tag, "OK", "MOVE completed")

    # -- IDLE ----------------------------------------------------------------------------------------

    async def idle(self, ev: Idle) -> bool:
        """Report changes as they come until DONE; False if the client went away.

        The session sleeps until the client sends something or the bridge's
        :class:`~ams.imap._watch.Watcher` says the selected log changed.
        """
        deadline = trio.current_time() + self.autologout
        sel = self.selected
        with contextlib.ExitStack() as stack:
            watched: list[Watched] = []
            if sel is not None:
                watched.append(stack.enter_context(self.bridge.watcher.watch(sel.log_id, sel.log)))
                if sel.flags_key is not None:
                    watched.append(stack.enter_context(self.bridge.watcher.watch(
                        sel.flags_key, None, sel.flags_path)))
            while True:
                event = self.conn.next_event()
                if isinstance(event, IdleDone):
                    self.conn.complete(event.tag, "OK", "IDLE terminated")
                    return True
                if isinstance(event, ConnectionClosed):
                    await self.flush()
                    return False
                if event is not NEED_DATA:  # pragma: no cover - only DONE ends IDLE
                    raise AssertionError(f"unexpected event in IDLE: {event!r}")
                versions = [w.version for w in watched]
                await self.report_changes()
                await self.flush()
                if trio.current_time() > deadline:
                    self.conn.bye("Autologout; idle for too long")
                    await self.flush()
                    return False
                data = await self._input_or_change(watched, versions, deadline)
                if data is not None:
                    self.conn.receive_data(bytes(data))

    async def _input_or_change(self, watched: list[Watched], versions: list[int],
                               deadline: float) -> bytes | bytearray | None:
        """The client's next bytes, or None when something watched changed or
        time is up."""
        got: list[bytes | bytearray] = []
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                async def receive() -> None:
                    got.append(await self.stream.receive_some(RECV_SIZE))
                    nursery.cancel_scope.cancel()

                async def change(w: Watched, version: int) -> None:
                    await w.changed(version)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(receive)
                for w, version in zip(watched, versions, strict=True):
                    nursery.start_soon(change, w, version)
        return got[0] if got else None


def _requested(seqset: SequenceSet, sel: Selected) -> tuple[range, ...]:
    """The UID ranges a UID set names, below the mailbox's UIDNEXT."""
    return seqset.resolve(sel.uidnext - 1, clip=True)


def _gaps(uids: list[int], spans: tuple[range, ...]) -> SequenceSet | None:
    """The numbers in ``spans`` missing from the sorted ``uids``, as a set."""
    out: list[tuple[int, int]] = []
    for r in spans:
        if not r:
            continue
        i = bisect.bisect_left(uids, r.start)
        at = r.start
        while at < r.stop:
            nxt = uids[i] if i < len(uids) else r.stop
            if nxt > at:
                out.append((at, min(nxt, r.stop) - 1))
            at = nxt + 1
            i += 1
    return SequenceSet(tuple(out)) if out else None


def _ok(code: Any, text: str) -> Any:
    return R.StatusResponse("OK", text, code=code)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200] or "Refused"


def _internal_date(value: datetime | None) -> tuple[int | None, int]:
    if value is None:
        return None, 0
    off = value.utcoffset() or timedelta(0)
    return int(value.timestamp()), int(off.total_seconds() // 60)


def _match(pattern: str, name: str) -> bool:
    """LIST wildcards: ``*`` matches anything, ``%`` anything but the delimiter."""
    rx = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    if re.fullmatch(rx, name, flags=re.DOTALL):
        return True
    return name.upper() == "INBOX" and pattern.upper() == "INBOX"


def _peer(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "?"
    return f"[{host}]:{port}"


async def serve_imap(config: Config, *, listen: str | None = None,
                     ssl_context: ssl.SSLContext | None = None,
                     task_status: trio.TaskStatus[list[trio.SocketListener]]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """Run an IMAP bridge until cancelled; ``task_status`` gets the listeners."""
    from gateways import parse_listen, server_ssl_context

    ctx = ssl_context or server_ssl_context(config)
    bridge = await trio.to_thread.run_sync(functools.partial(Bridge, config, ssl_context=ctx))
    try:
        host, port = parse_listen(listen or config.listen.imap)
        listeners: list[Any] = list(await trio.open_tcp_listeners(port, host=host))
        if config.listen.imaps and ctx is not None:
            # Implicit TLS (RFC 8314): the handshake comes first, so the
            # session starts with TLS active.
            thost, tport = parse_listen(config.listen.imaps)
            for tcp in await trio.open_tcp_listeners(tport, host=thost):
                listeners.append(trio.SSLListener(tcp, ctx, https_compatible=False))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.watcher.run)
            task_status.started(listeners)
            await trio.serve_listeners(bridge.handle, listeners)
    finally:
        bridge.close()


__all__ = ["Bridge", "Session", "serve_imap", "timezone"]
