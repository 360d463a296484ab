"""Sequence sets (RFC 3501 §9 ``sequence-set``; RFC 5182 ``$``).

Theory of operation
-------------------
A set is kept as the client wrote it: a tuple of ``(start, end)`` pairs in
which ``None`` stands for ``*`` ("the largest number in use").  It cannot be
turned into numbers without knowing that largest number, and the core does
not know the mailbox, so the driver calls :meth:`SequenceSet.resolve` with
the message count (for sequence numbers) or the highest UID (for UIDs).

``resolve`` returns sorted, merged, disjoint ``range`` objects.  ``n:m`` and
``m:n`` are the same range (RFC 3501 §9: "the order does not matter").  With
``clip=False`` (the default) nothing is dropped, so the driver can tell that
``5:7`` names sequence numbers that do not exist (a BAD, RFC 9051 §6.4);
UID sets are usually resolved with ``clip=True``: UIDs that do not exist
are simply not there.  ``*`` in an empty mailbox resolves to nothing.

``$`` (SEARCHRES) is the result of the last ``SEARCH RETURN (SAVE)``; only
the driver knows it, so a saved set has ``saved=True``, no ranges, and
:meth:`resolve` refuses it.

``SequenceSet.from_numbers`` builds the compact form for responses
(COPYUID, APPENDUID, VANISHED, ESEARCH ALL), and ``str()`` renders it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["MAX_NUMBER", "SequenceSet"]

MAX_NUMBER = 2**32 - 1          # nz-number is an unsigned 32-bit integer
_SEQ_NUMBER = r"(?:[1-9][0-9]{0,9}|\*)"
_SEQUENCE_SET = re.compile(rf"{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?(?:,{_SEQ_NUMBER}(?::{_SEQ_NUMBER})?)*")

Bound = int | None


def _bound(text: str) -> Bound:
    if text == "*":
        return None
    value = int(text)
    if value > MAX_NUMBER:
        raise ValueError(f"sequence number out of range: {text}")
    return value


def _render(bound: Bound) -> str:
    return "*" if bound is None else str(bound)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed ``sequence-set``.  Build with :meth:`parse` or :meth:`from_numbers`."""

    ranges: tuple[tuple[Bound, Bound], ...] = ()
    saved: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", tuple(self.ranges))
        if self.saved:
            if self.ranges:
                raise ValueError("a saved result ($) has no ranges of its own")
            return
        if not self.ranges:
            raise ValueError("a sequence set is never empty")
        for start, end in self.ranges:
            for bound in (start, end):
                if bound is not None and not (isinstance(bound, int) and 1 <= bound <= MAX_NUMBER):
                    raise ValueError(f"bad sequence number {bound!r}")

    @classmethod
    def parse(cls, text: str | bytes, *, allow_saved: bool = True) -> SequenceSet:
        """``"1:3,7,10:*"`` → a set; ``"$"`` → the saved result.  ValueError otherwise."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        if text == "$" and allow_saved:
            return cls(saved=True)
        if not _SEQUENCE_SET.fullmatch(text):
            raise ValueError(f"not a sequence set: {text!r}")
        ranges = []
        for part in text.split(","):
            first, _, last = part.partition(":")
            start = _bound(first)
            ranges.append((start, _bound(last) if last else start))
        return cls(tuple(ranges))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """The shortest set naming exactly ``numbers`` (at least one)."""
        ranges: list[tuple[Bound, Bound]] = []
        for n in sorted(set(numbers)):
            if ranges and ranges[-1][1] == n - 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return cls(tuple(ranges))

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_render(a) if a == b else f"{_render(a)}:{_render(b)}"
                        for a, b in self.ranges)

    @property
    def uses_star(self) -> bool:
        return any(None in pair for pair in self.ranges)

    def resolve(self, largest: int, *, clip: bool = False) -> tuple[range, ...]:
        """Sorted, merged ranges, with ``*`` = ``largest`` (message count or
        highest UID; 0 for an empty mailbox).  ``clip`` drops numbers above
        ``largest``."""
        if self.saved:
            raise ValueError("the saved result ($) must be substituted by the driver")
        if largest < 0:
            raise ValueError("largest must be >= 0")
        spans: list[tuple[int, int]] = []
        for start, end in self.ranges:
            if largest == 0 and None in (start, end):
                continue                      # "*" in an empty mailbox names nothing
            lo, hi = (largest if start is None else start), (largest if end is None else end)
            lo, hi = min(lo, hi), max(lo, hi)
            lo = max(lo, 1)
            if clip:
                hi = min(hi, largest)
            if lo <= hi:
                spans.append((lo, hi))
        spans.sort()
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return tuple(range(lo, hi + 1) for lo, hi in merged)

    def numbers(self, largest: int, *, clip: bool = False) -> Iterator[int]:
        """Every number in the set, ascending, without repeats."""
        for span in self.resolve(largest, clip=clip):
            yield from span

    def contains(self, number: int, largest: int) -> bool:
        return any(number in span for span in self.resolve(largest))

    def highest(self, largest: int) -> int:
        """The highest number the set names (0 if none): more than the
        message count means a sequence number that does not exist."""
        spans = self.resolve(largest)
        return spans[-1][-1] if spans else 0
