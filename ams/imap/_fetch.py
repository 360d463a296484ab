"""FETCH and SEARCH over a selected mailbox, with the message analysis cached.

Index data (flags, UID, internal date, size, MODSEQ) comes from the local
LMDB index and costs no read of the log.  ENVELOPE, BODYSTRUCTURE and
sections need the message: it is read from its log segment by location (one
pread) and analysed once (ams.message.analyse); the analysis is kept in a
per-process LRU so that a partial fetch or a repeated ENVELOPE does not
parse it again.  Runs in a worker thread.
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, overload

from ams import message as M
from ams.imap._backend import Selected
from ams.index import IndexedMessage, MailboxView
from ams.index._codec import FLAGS_AT, MODSEQ_AT, MODSEQ_END
from ams.protocols import imap as P
from ams.protocols.imap import Concat, LiteralData
from ams.protocols.imap import responses as R

CACHE_ENTRIES = 4096


class FetchCache:
    """Analyses of recently fetched messages, keyed by (log id, UID)."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.size = size
        self._lru: OrderedDict[tuple[str, int], M.Analysis] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, sel: Selected, m: IndexedMessage) -> M.Analysis | None:
        with self._lock:
            return self._lru.get((sel.log_id, m.uid))

    def analysis(self, sel: Selected, m: IndexedMessage, raw: bytes | None = None) -> M.Analysis:
        key = (sel.log_id, m.uid)
        with self._lock:
            got = self._lru.get(key)
            if got is not None:
                self._lru.move_to_end(key)
                return got
        got = M.analyse(raw if raw is not None else sel.read(m))
        with self._lock:
            self._lru[key] = got
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
        return got


def imap_value(v: Any) -> Any:
    """ams.message's nested values → the IMAP encoder's items."""
    if isinstance(v, M.Adjacent):
        return Concat(imap_value(x) for x in v)
    if isinstance(v, list):
        return tuple(imap_value(x) for x in v)
    return v


def encode_envelope(env: M.Envelope, *, utf8: bool = False) -> bytes:
    """ENVELOPE's wire bytes, straight from the envelope: the bytes
    ``R.encode_value(imap_value(M.envelope_to_imap(env)))`` gives, without
    building and checking the nested value first (a first FETCH of
    ENVELOPE on a big mailbox spends most of its time there)."""
    encode = R.encode_string

    def s(v: str | None) -> bytes:
        # Printable ASCII with nothing to escape, the usual member, quoted
        # here; anything else the way encode_string decides.
        if v is None:
            return b"NIL"
        if v.isascii() and v.isprintable() and len(v) <= R.MAX_QUOTED and (
                '"' not in v and "\\" not in v):
            return b'"%s"' % v.encode("ascii")
        return encode(v, utf8=utf8)

    def addresses(addrs: tuple[M.Address, ...]) -> bytes:
        if not addrs:
            return b"NIL"
        return b"(" + b"".join(b"(%s %s %s %s)" % (s(a.name), s(a.adl), s(a.mailbox), s(a.host))
                               for a in addrs) + b")"

    # Sender and Reply-To, when absent, are From itself: encoded once.
    from_ = addresses(env.from_)
    sender = from_ if env.sender is env.from_ else addresses(env.sender)
    reply_to = from_ if env.reply_to is env.from_ else addresses(env.reply_to)
    return b"(%s %s %s %s %s %s %s %s %s %s)" % (
        s(env.date), s(env.subject), from_, sender, reply_to, addresses(env.to),
        addresses(env.cc), addresses(env.bcc), s(env.in_reply_to), s(env.message_id))


def internal_date(m: IndexedMessage) -> datetime:
    return datetime.fromtimestamp(m.internal_date, tz=timezone(timedelta(minutes=m.tz_minutes)))


#: Items answered from the index entry alone.
INDEX_ITEMS = frozenset({"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
#: Items kept, encoded, in the index's ``cache`` database (no section).
CACHED_KINDS = {"ENVELOPE": b"E", "BODYSTRUCTURE": b"S", "BODY": b"B"}
CACHE_VERSION = b"\x01"
#: The cache kind of where a message's text parts lie (for SEARCH BODY/TEXT).
TEXT_SPANS = b"T"


class FetchPlan:
    """What one FETCH command asks for, worked out once for all its messages."""

    def __init__(self, ev: P.Fetch, *, readonly: bool, utf8: bool, condstore: bool) -> None:
        self.attrs = list(ev.attributes)
        self.names = [R.fetch_name(a) + b" " for a in self.attrs]
        self.sets_seen = not readonly and any(a.sets_seen for a in self.attrs)
        self.changed_since = ev.changed_since
        self.utf8 = utf8
        self.kinds: list[bytes | None] = [
            CACHED_KINDS.get(a.name) if a.section is None and not utf8 else None
            for a in self.attrs]
        names = {a.name for a in self.attrs}
        #: Answer FLAGS (and MODSEQ under CONDSTORE) even if not asked:
        #: when \Seen is set implicitly, and MODSEQ with every FLAGS once
        #: CONDSTORE is in force (RFC 7162 §3.1.4).
        self.add_flags = self.sets_seen and "FLAGS" not in names
        self.add_modseq = condstore and "MODSEQ" not in names and (
            "FLAGS" in names or self.add_flags)
        #: For FETCHes of UID, FLAGS, RFC822.SIZE and MODSEQ only (what a
        #: client syncing flags asks for): one format string for the whole
        #: response, filled from (seq, uid, flags, size, modseq).
        self.template: bytes | None = None
        self.fields: tuple[int, ...] = ()
        if all(a.name in _TEMPLATE for a in self.attrs):
            pieces = [_TEMPLATE[a.name] for a in self.attrs]
            if self.add_flags:
                pieces.append(_TEMPLATE["FLAGS"])
            if self.add_modseq:
                pieces.append(_TEMPLATE["MODSEQ"])
            self.template = b"* %d FETCH (" + b" ".join(p for p, _ in pieces) + b")\r\n"
            self.fields = (0, *(f for _, f in pieces))


#: Item -> (its piece of a response template, its field in the row tuple).
_TEMPLATE = {"UID": (b"UID %d", 1), "FLAGS": (b"FLAGS %s", 2), "RFC822.SIZE": (b"RFC822.SIZE %d", 3),
             "MODSEQ": (b"MODSEQ (%d)", 4)}


class SeqRun(Sequence[tuple[int, int]]):
    """(seq, UID) pairs for consecutive sequence numbers: the first number
    and a slice of the session's UIDs, without a tuple per message until
    one is asked for.  What ``1:*`` and other single ranges resolve to."""

    __slots__ = ("first_seq", "uids")

    def __init__(self, first_seq: int, uids: Sequence[int]) -> None:
        self.first_seq = first_seq
        self.uids = uids

    def __len__(self) -> int:
        return len(self.uids)

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> SeqRun: ...

    def __getitem__(self, i: int | slice) -> tuple[int, int] | SeqRun:
        n = len(self.uids)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                raise ValueError("a SeqRun slices with step 1 only")
            return SeqRun(self.first_seq + start, self.uids[start:max(start, stop)])
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self.first_seq + i, self.uids[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(range(self.first_seq, self.first_seq + len(self.uids)), self.uids,
                   strict=True)


class FetchResult:
    __slots__ = ("data", "seen", "count")

    def __init__(self) -> None:
        self.data = bytearray()
        self.seen: list[int] = []
        self.count = 0


def fetch_chunk(sel: Selected, pairs: Sequence[tuple[int, int]], plan: FetchPlan,
                cache: FetchCache) -> FetchResult:
    """Encoded FETCH responses for ``(seq, uid)`` pairs; the UIDs to mark \\Seen.

    The hot loop of FETCH: each message costs one LMDB read, plus one more
    per cached item (ENVELOPE, BODYSTRUCTURE); the message itself is read
    from its log segment only for sections or a cache miss, and what a miss
    computes is cached for the next FETCH.
    """
    if plan.template is not None:
        return _fetch_index_only(sel, pairs, plan)
    out = FetchResult()
    data = out.data
    flag_bytes: dict[bytes | frozenset[str], tuple[frozenset[str], bytes, bytes]] = {}
    puts: list[tuple[int, bytes, bytes]] = []
    items = list(zip(plan.attrs, plan.names, plan.kinds, strict=True))
    since = plan.changed_since
    overlay = sel.overlay()
    with sel.index.view(sel.log_id) as view, sel.log.message_reader() as reader:
        for seq, uid, v in _rows(view, pairs):
            if since is not None and _modseq_of(v) <= since:
                continue
            mb: bytes | frozenset[str] = (bytes(v[FLAGS_AT:]) if overlay is None
                                          else overlay.get(uid))
            fl = flag_bytes.get(mb)
            if fl is None:
                fs = view.flagset(mb) if overlay is None else mb  # type: ignore[arg-type]
                fl = flag_bytes[mb] = (fs, R.flag_list(fs), R.flag_list(fs | {"\\Seen"}))
            marks = plan.sets_seen and "\\Seen" not in fl[0]
            if marks:
                out.seen.append(uid)
            flags = fl[2] if marks else fl[1]
            m: IndexedMessage | None = None
            raw: bytes | None = None
            pieces = []
            for a, name, kind in items:
                an = a.name
                if an == "FLAGS":
                    pieces.append(b"FLAGS " + flags)
                elif an == "UID":
                    pieces.append(b"UID %d" % uid)
                elif an == "RFC822.SIZE":
                    pieces.append(b"RFC822.SIZE %d" % _size_of(v))
                elif an == "MODSEQ":
                    pieces.append(b"MODSEQ (%d)" % _modseq_of(v))
                else:
                    if kind is not None:
                        got = view.cached(uid, kind)
                        if got is not None and got[:1] == CACHE_VERSION:
                            pieces.append(name + got[1:])
                            continue
                    if m is None:
                        m = view.message(uid, v)
                    if raw is None and an not in INDEX_ITEMS:
                        raw = reader.read(m.location)
                    if an == "ENVELOPE":
                        got_an = cache.peek(sel, m)
                        value = encode_envelope(got_an.envelope if got_an else
                                                M.envelope(raw or b""), utf8=plan.utf8)
                    else:
                        value = R.encode_value(_item(a, sel, m, raw or b"", [], cache),
                                               utf8=plan.utf8)
                    if kind is not None:
                        puts.append((uid, kind, CACHE_VERSION + value))
                    pieces.append(name + value)
            if plan.add_flags:
                pieces.append(b"FLAGS " + flags)
            if plan.add_modseq:
                pieces.append(b"MODSEQ (%d)" % _modseq_of(v))
            data += R.encoded_fetch(seq, pieces)
            out.count += 1
        mbx = view.mbx
    if puts:
        sel.index.put_cached(mbx, puts)
    return out


def _fetch_index_only(sel: Selected, pairs: Sequence[tuple[int, int]], plan: FetchPlan,
                      ) -> FetchResult:
    """fetch_chunk for template plans: the same answers, a tighter loop."""
    assert plan.template is not None
    out = FetchResult()
    data, seen, template = out.data, out.seen, plan.template
    pick = operator.itemgetter(*plan.fields)
    since = plan.changed_since
    sets_seen = plan.sets_seen
    flag_bytes: dict[bytes | frozenset[str], tuple[bool, bytes, bytes]] = {}
    from_bytes = int.from_bytes
    overlay = sel.overlay()
    # UID and FLAGS alone (what a client syncing flags asks) fill the
    # template directly; other plans pick their fields from a row tuple.
    uid_flags = plan.fields == (0, 1, 2)
    parts: list[bytes] = []
    append = parts.append
    with sel.index.view(sel.log_id) as view:
        if since is None and overlay is None and not sets_seen and isinstance(pairs, SeqRun):
            block = _template_block(view, pairs, plan)
            if block is not None:
                data += block
                out.count = len(pairs)
                return out
        for seq, uid, v in _rows(view, pairs):
            if since is not None and from_bytes(v[MODSEQ_AT:MODSEQ_END], "little") <= since:
                continue
            mb: bytes | frozenset[str] = v[FLAGS_AT:] if overlay is None else overlay.get(uid)
            fl = flag_bytes.get(mb)
            if fl is None:
                fs = view.flagset(mb) if overlay is None else mb  # type: ignore[arg-type]
                fl = flag_bytes[mb] = ("\\Seen" in fs, R.flag_list(fs),
                                       R.flag_list(fs | {"\\Seen"}))
            if sets_seen and not fl[0]:
                seen.append(uid)
                flags = fl[2]
            else:
                flags = fl[1]
            if uid_flags:
                append(template % (seq, uid, flags))
            else:
                append(template % pick((seq, uid, flags, from_bytes(v[16:20], "little"),
                                        from_bytes(v[MODSEQ_AT:MODSEQ_END], "little"))))
    data += b"".join(parts)
    out.count = len(parts)
    return out


class _FlagLists(dict[bytes, bytes]):
    """Stored flag mask → its FLAGS list on the wire, worked out the first
    time each mask is met."""

    def __init__(self, view: MailboxView) -> None:
        super().__init__()
        self.view = view

    def __missing__(self, mask: bytes) -> bytes:
        got = self[mask] = R.flag_list(self.view.flagset(mask))
        return got


_MASK = operator.itemgetter(slice(FLAGS_AT, None))
_SIZE = operator.itemgetter(slice(16, 20))
_MODSEQ = operator.itemgetter(slice(MODSEQ_AT, MODSEQ_END))


def _template_block(view: MailboxView, pairs: SeqRun, plan: FetchPlan) -> bytes | None:
    """The whole answer for a run of consecutive messages the index holds
    every one of, as one format operation over all their fields: no Python
    step per message, which is what a client syncing flags on a big mailbox
    waits for.  None when the index's range is not exactly the run (an
    expunge not yet reported): the caller then matches message by message."""
    assert plan.template is not None
    n = len(pairs)
    values = view.values(pairs.uids[0], pairs.uids[-1], count=n)
    if len(values) != n:
        return None

    def column(field: int) -> Sequence[Any]:
        """One field of every message (see _TEMPLATE), by C loops."""
        if field == 0:
            return range(pairs.first_seq, pairs.first_seq + n)
        if field == 1:
            return pairs.uids
        if field == 2:
            return list(map(_FlagLists(view).__getitem__, map(_MASK, values)))
        part = _SIZE if field == 3 else _MODSEQ
        return list(map(int.from_bytes, map(part, values), itertools.repeat("little")))

    # The format's arguments, field by field into every k-th slot.
    k = len(plan.fields)
    args: list[Any] = [None] * (n * k)
    made: dict[int, Sequence[Any]] = {}
    for i, field in enumerate(plan.fields):
        if field not in made:
            made[field] = column(field)
        args[i::k] = made[field]
    return (plan.template * n) % tuple(args)


def _rows(view: MailboxView, pairs: Sequence[tuple[int, int]],
          ) -> Iterator[tuple[int, int, bytes]]:
    """(seq, UID, stored value) for the pairs the index still has (a message
    expunged but not yet reported to the session is skipped): one cursor
    walk when the UIDs are dense, else a look-up each."""
    if not pairs:
        return
    first, last = pairs[0][1], pairs[-1][1]
    if pairs[-1][0] - pairs[0][0] + 1 == len(pairs):
        # Consecutive sequence numbers: the pairs are every UID the session
        # knows from first to last, and the index can hold no other UID in
        # that range (UIDs are never reused; new ones come after the
        # session's last).  Equal counts mean equal sets: no matching.
        values = view.values(first, last)
        if len(values) == len(pairs):
            if isinstance(pairs, SeqRun):
                yield from zip(range(pairs.first_seq, pairs.first_seq + len(pairs)),
                               pairs.uids, values, strict=True)
                return
            for (seq, uid), v in zip(pairs, values, strict=True):
                yield seq, uid, v
            return
    if last - first + 1 > 2 * len(pairs):
        for seq, uid in pairs:
            v = view.raw(uid)
            if v is not None:
                yield seq, uid, v
        return
    it = iter(pairs)
    seq, uid = next(it)
    for got, v in view.raw_range(first, last):
        while got > uid:
            nxt = next(it, None)
            if nxt is None:
                return
            seq, uid = nxt
        if got == uid:
            yield seq, uid, v
            nxt = next(it, None)
            if nxt is None:
                return
            seq, uid = nxt


def _modseq_of(v: bytes) -> int:
    return int.from_bytes(v[MODSEQ_AT:MODSEQ_END], "little")


def _size_of(v: bytes) -> int:
    return int.from_bytes(v[16:20], "little")


def _item(a: P.FetchAttribute, sel: Selected, m: IndexedMessage, raw: bytes,
          flags: list[str], cache: FetchCache) -> Any:
    name = a.name
    if name == "FLAGS":
        return R.flag_atoms(flags)
    if name == "UID":
        return m.uid
    if name == "INTERNALDATE":
        return internal_date(m)
    if name == "RFC822.SIZE":
        return m.size
    if name == "MODSEQ":
        return (m.modseq,)
    if name == "RFC822":
        return LiteralData(raw)
    if name == "RFC822.HEADER":
        return LiteralData(M.section(raw, "HEADER"))
    if name == "RFC822.TEXT":
        return LiteralData(M.section(raw, "TEXT"))
    if name == "ENVELOPE":
        # The header alone, unless the whole analysis is at hand already.
        got = cache.peek(sel, m)
        return imap_value(M.envelope_to_imap(got.envelope if got else M.envelope(raw)))
    an = cache.analysis(sel, m, raw)
    if name in ("BODYSTRUCTURE", "BODY") and a.section is None:
        return imap_value(M.bodystructure_to_imap(an.structure, name == "BODYSTRUCTURE"))
    if a.section is not None:
        data = M.section(raw, a.section, parts=an.parts,
                         partial=(a.partial[0], a.partial[1]) if a.partial else None)
        return LiteralData(data)
    return None


def search_matches(sel: Selected, criteria: P.SearchKey, cache: FetchCache,
                   ) -> list[tuple[int, int]]:
    """(seq, uid) of every message matching ``criteria``."""
    key = convert_key(criteria)
    largest_uid = sel.uids[-1] if sel.uids else 0
    out = []
    # BODY and TEXT need to know where a message's text parts are: kept in
    # the index cache, so that only a message's first such search walks its
    # MIME structure.
    spans = M.needs(key) > M.Need.HEADER
    puts: list[tuple[int, bytes, bytes]] = []
    with sel.log.message_reader() as reader, sel.index.view(sel.log_id) as view:
        for seq, m in sel.messages(sel.uids):
            known = keep = None
            if spans:
                got = view.cached(m.uid, TEXT_SPANS)
                if got is not None and got[:1] == CACHE_VERSION:
                    known = got[1:]
                else:
                    keep = functools.partial(_keep_spans, puts, m.uid)
            info = M.MessageInfo(uid=m.uid, seq=seq, flags=m.flags,
                                 internal_date=internal_date(m), size=m.size, modseq=m.modseq,
                                 message=functools.partial(reader.read, m.location),
                                 text_spans=known, keep_text_spans=keep)
            if M.matches(key, info, largest_seq=sel.exists, largest_uid=largest_uid):
                out.append((seq, m.uid))
        mbx = view.mbx
    if puts:
        sel.index.put_cached(mbx, puts)
    return out


def _keep_spans(puts: list[tuple[int, bytes, bytes]], uid: int, data: bytes) -> None:
    puts.append((uid, TEXT_SPANS, CACHE_VERSION + data))


_HEADERS = {"FROM": M.From, "TO": M.To, "CC": M.Cc, "BCC": M.Bcc, "SUBJECT": M.Subject}
_DATES = {("INTERNALDATE", "BEFORE"): M.Before, ("INTERNALDATE", "ON"): M.On,
          ("INTERNALDATE", "SINCE"): M.Since, ("SENT", "BEFORE"): M.SentBefore,
          ("SENT", "ON"): M.SentOn, ("SENT", "SINCE"): M.SentSince}


def convert_key(k: P.SearchKey) -> M.SearchKey:
    """The IMAP parser's SEARCH tree → ams.message's (one to one)."""
    if isinstance(k, P.All):
        return M.All()
    if isinstance(k, P.And):
        return M.And(tuple(convert_key(x) for x in k.keys))
    if isinstance(k, P.Or):
        return M.Or(convert_key(k.left), convert_key(k.right))
    if isinstance(k, P.Not):
        return M.Not(convert_key(k.key))
    if isinstance(k, P.FlagKey):
        leaf: M.SearchKey = M.Recent() if k.flag == "\\Recent" else M.Flag(k.flag)
        return leaf if k.present else M.Not(leaf)
    if isinstance(k, P.HeaderKey):
        cls = _HEADERS.get(k.field_name.upper())
        return cls(k.value) if cls else M.Header(k.field_name, k.value)
    if isinstance(k, P.BodyKey):
        return M.Body(k.value)
    if isinstance(k, P.TextKey):
        return M.Text(k.value)
    if isinstance(k, P.DateKey):
        return _DATES[(k.field_name, k.relation)](k.date)
    if isinstance(k, P.SizeKey):
        return M.Larger(k.size) if k.relation == "LARGER" else M.Smaller(k.size)
    if isinstance(k, P.SequenceKey):
        return M.Uid(k.sequence_set) if k.uid else M.Sequence(k.sequence_set)
    if isinstance(k, P.ModSeqKey):
        return M.ModSeq(k.modseq)
    raise ValueError(f"unknown search key {k!r}")


__all__ = ["FetchCache", "FetchPlan", "FetchResult", "SeqRun", "convert_key", "encode_envelope",
           "fetch_chunk", "imap_value", "search_matches"]
