"""FETCH and SEARCH over a selected mailbox, with the message analysis cached.

Index data (flags, UID, internal date, size, MODSEQ) comes from the local
LMDB index and costs no read of the log.  ENVELOPE, BODYSTRUCTURE and
sections need the message: it is read from its log segment by location (one
pread) and analysed once (ams.message.analyse); the analysis is kept in a
per-process LRU so that a partial fetch or a repeated ENVELOPE does not
parse it again.  Runs in a worker thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any

from ams import message as M
from ams.imap._backend import Selected
from ams.index import IndexedMessage
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


def internal_date(m: IndexedMessage) -> datetime:
    return datetime.fromtimestamp(m.internal_date, tz=timezone(timedelta(minutes=m.tz_minutes)))


def fetch_items(sel: Selected, uids: list[int], ev: P.Fetch, cache: FetchCache,
                ) -> tuple[list[tuple[int, list[tuple[Any, Any]]]], list[int]]:
    """The FETCH responses for ``uids``; and the UIDs to mark \\Seen."""
    attrs = ev.attributes
    needs_message = any(a.name not in ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ")
                        for a in attrs)
    sets_seen = any(a.sets_seen for a in attrs)
    out: list[tuple[int, list[tuple[Any, Any]]]] = []
    seen: list[int] = []
    wanted = uids
    if ev.changed_since is not None:
        with sel.index.view(sel.log_id) as view:
            changed = {u for u, _ in view.changed_since(ev.changed_since)}
        wanted = [u for u in uids if u in changed]
    for seq, m in sel.messages(wanted):
        raw = sel.read(m) if needs_message else b""
        marks = sets_seen and "\\Seen" not in m.flags and not sel.readonly
        flags = sorted(m.flags | {"\\Seen"}) if marks else sorted(m.flags)
        if marks:
            seen.append(m.uid)
        items: list[tuple[Any, Any]] = []
        for a in attrs:
            items.append((a, _item(a, sel, m, raw, flags, cache)))
        if marks and not any(a.name == "FLAGS" for a in attrs):
            items.append(("FLAGS", R.flag_atoms(flags)))
        out.append((seq, items))
    return out, seen


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
    an = cache.analysis(sel, m, raw)
    if name == "ENVELOPE":
        return imap_value(M.envelope_to_imap(an.envelope))
    if name in ("BODYSTRUCTURE", "BODY") and a.section is None:
        return imap_value(M.bodystructure_to_imap(an.structure, name == "BODYSTRUCTURE"))
    if a.section is not None:
        data = M.section(raw, a.section, parts=an.parts,
                         partial=(a.partial[0], a.partial[1]) if a.partial else None)
        return LiteralData(data)
    return None


def _info(sel: Selected, seq: int, m: IndexedMessage) -> M.MessageInfo:
    return M.MessageInfo(uid=m.uid, seq=seq, flags=m.flags, internal_date=internal_date(m),
                         size=m.size, modseq=m.modseq,
                         message=lambda: sel.read(m))


def search_matches(sel: Selected, criteria: P.SearchKey, cache: FetchCache,
                   ) -> list[tuple[int, int]]:
    """(seq, uid) of every message matching ``criteria``."""
    key = convert_key(criteria)
    largest_uid = sel.uids[-1] if sel.uids else 0
    out = []
    for seq, m in sel.messages(sel.uids):
        if M.matches(key, _info(sel, seq, m), largest_seq=sel.exists,
                     largest_uid=largest_uid):
            out.append((seq, m.uid))
    return out


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


__all__ = ["FetchCache", "convert_key", "fetch_items", "imap_value", "search_matches"]
