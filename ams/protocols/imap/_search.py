"""SEARCH criteria as a tree (RFC 3501 §6.4.4, RFC 7162 §3.1.5).

The parser turns ``search-key *(SP search-key)`` into these nodes: a list of
keys (or a parenthesised group) is :class:`And`, ``OR a b`` is :class:`Or`,
``NOT k`` is :class:`Not`; every other key is a typed leaf with its
argument converted (dates are ``date``, sizes ``int``, sets
:class:`SequenceSet`, strings decoded by the CHARSET).  Keys that are
shorthands become the tree they stand for: NEW is RECENT and UNSEEN, OLD is
NOT RECENT, UNSEEN is \\Seen absent, and so on, so a matcher needs one case
per leaf type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Literal

from ams.protocols.imap._sequence import SequenceSet

__all__ = ["All", "And", "BodyKey", "DateKey", "FlagKey", "HeaderKey", "ModSeqKey", "Not", "Or",
           "SearchKey", "SequenceKey", "SizeKey", "TextKey", "walk"]


@dataclass(frozen=True, slots=True)
class SearchKey:
    """Base class of the nodes of a SEARCH criteria tree."""


@dataclass(frozen=True, slots=True)
class All(SearchKey):
    pass


@dataclass(frozen=True, slots=True)
class And(SearchKey):
    """Every key matches (a list of keys, or a parenthesised group)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class Or(SearchKey):
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class Not(SearchKey):
    key: SearchKey


@dataclass(frozen=True, slots=True)
class FlagKey(SearchKey):
    """ANSWERED/UNANSWERED, SEEN, KEYWORD k ...: ``flag`` is set (``present``)
    or not.  NEW is RECENT and UNSEEN; OLD is not RECENT."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey(SearchKey):
    """BCC, CC, FROM, SUBJECT, TO, HEADER name: ``value`` is a substring of
    the field (an empty value matches any message having the field)."""

    field_name: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey(SearchKey):
    value: str


@dataclass(frozen=True, slots=True)
class TextKey(SearchKey):
    """TEXT: header or body contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class DateKey(SearchKey):
    """BEFORE/ON/SINCE (internal date) and SENTBEFORE/SENTON/SENTSINCE
    (the Date: header), ignoring time and time zone (RFC 3501 §6.4.4)."""

    field_name: Literal["INTERNALDATE", "SENT"]
    relation: Literal["BEFORE", "ON", "SINCE"]
    date: date


@dataclass(frozen=True, slots=True)
class SizeKey(SearchKey):
    relation: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class SequenceKey(SearchKey):
    """A sequence set, or ``UID set`` when ``uid``."""

    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ModSeqKey(SearchKey):
    """RFC 7162 MODSEQ [entry-name entry-type] n: changed at or after ``modseq``."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


def walk(key: SearchKey) -> Iterator[SearchKey]:
    yield key
    if isinstance(key, And):
        for sub in key.keys:
            yield from walk(sub)
    elif isinstance(key, Or):
        yield from walk(key.left)
        yield from walk(key.right)
    elif isinstance(key, Not):
        yield from walk(key.key)
