"""The record codec: round trips, and damage is always caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams.errors import CorruptionError, FormatVersionError
from ams.store import format as fmt
from ams.store.format import FlagOp, Incomplete, RecordType

flag = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
               max_size=12)
uid = st.integers(1, fmt.MAX_UID)
ranges = st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 1000)).map(
    lambda t: (t[0], t[0] + t[1])), max_size=20)


@given(message=st.binary(max_size=3000), date=st.integers(-2**40, 2**40),
       tz=st.integers(-1439, 1439), flags=st.lists(flag, max_size=6),
       did=st.text(max_size=80), u=uid, modseq=st.integers(0, 2**63), t=st.integers(0, 2**63))
def test_append_round_trip(message: bytes, date: int, tz: int, flags: list[str], did: str,
                           u: int, modseq: int, t: int) -> None:
    payload = fmt.encode_append_payload(message, internal_date=date, tz_minutes=tz, flags=flags,
                                        delivery_id=did)
    raw = fmt.encode_record(RecordType.APPEND, payload, uid=u, modseq=modseq, time_us=t,
                            uidnext=min(u + 1, fmt.MAX_UID))
    rec = fmt.decode_record(raw)
    assert rec.end == len(raw)
    assert (rec.uid, rec.modseq, rec.header.time_us) == (u, modseq, t)
    b = rec.body
    assert isinstance(b, fmt.Append)
    assert (b.internal_date, b.tz_minutes, b.flags, b.delivery_id) == (date, tz, tuple(flags), did)
    start = fmt.RECORD_HEADER_SIZE + b.message_offset
    assert raw[start:start + b.message_size] == message
    assert fmt.decode_trailer(raw[-8:]) == len(raw)


@given(op=st.sampled_from(list(FlagOp)), flags=st.lists(flag, max_size=6), rs=ranges)
def test_flags_and_expunge_round_trip(op: FlagOp, flags: list[str],
                                      rs: list[tuple[int, int]]) -> None:
    raw = fmt.encode_record(RecordType.FLAGS, fmt.encode_flags_payload(op, flags, rs), uid=0,
                            modseq=5, time_us=6, uidnext=7)
    body = fmt.decode_record(raw).body
    assert body == fmt.Flags(op, tuple(flags), tuple(rs))
    raw = fmt.encode_record(RecordType.EXPUNGE, fmt.encode_expunge_payload(rs), uid=0, modseq=5,
                            time_us=6, uidnext=7)
    assert fmt.decode_record(raw).body == fmt.Expunge(tuple(rs))


def _sample() -> bytes:
    payload = fmt.encode_append_payload(b"Subject: x\r\n\r\nhello\r\n", internal_date=1,
                                        flags=["\\Seen"], delivery_id="q1/a@b")
    return fmt.encode_record(RecordType.APPEND, payload, uid=3, modseq=64, time_us=9, uidnext=4)


@settings(max_examples=300)
@given(data=st.data())
def test_any_single_byte_change_is_caught(data: st.DataObject) -> None:
    raw = bytearray(_sample())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises((CorruptionError, Incomplete, FormatVersionError)):
        rec = fmt.decode_record(bytes(raw))
        # A changed length may still leave a record that decodes; it must
        # then not be the same record.
        assert rec.end == len(raw)
        raise CorruptionError("decoded a damaged record")


@given(cut=st.integers(0, 200))
def test_every_truncation_is_incomplete(cut: int) -> None:
    raw = _sample()
    cut = min(cut, len(raw) - 1)
    with pytest.raises(Incomplete):
        fmt.decode_record(raw[:cut])


@given(data=st.binary(max_size=200))
def test_random_bytes_never_decode_silently(data: bytes) -> None:
    try:
        fmt.decode_record(data)
    except (CorruptionError, Incomplete, FormatVersionError):
        return
    pytest.fail("random bytes decoded as a record")


def test_segment_header_round_trip_and_refusals() -> None:
    h = fmt.SegmentHeader(uidvalidity=7, generation=2, seq=3, base=1000, uidnext=5,
                          created_us=123, modseq_floor=999)
    raw = h.encode()
    assert len(raw) == fmt.SEGMENT_HEADER_SIZE
    assert fmt.SegmentHeader.decode(raw) == h
    bad = bytearray(raw)
    bad[20] ^= 1
    with pytest.raises(CorruptionError):
        fmt.SegmentHeader.decode(bytes(bad))
    newer = fmt.SegmentHeader(7, 2, 3, 1000, 5, 123, 999, version=fmt.SEGMENT_VERSION + 1)
    with pytest.raises(FormatVersionError):
        fmt.SegmentHeader.decode(newer.encode())
    with pytest.raises(CorruptionError):
        fmt.SegmentHeader.decode(b"GIF89a" + raw[6:])


def test_unknown_record_version_is_refused() -> None:
    raw = bytearray(_sample())
    raw[5] = fmt.RECORD_VERSION + 1
    with pytest.raises(FormatVersionError):
        fmt.decode_record(bytes(raw))


def test_ranges_from_uids() -> None:
    assert fmt.ranges_from_uids([5, 1, 2, 3, 9, 10]) == [(1, 3), (5, 5), (9, 10)]
    assert fmt.uids_in([(1, 3), (7, 7)]) == [1, 2, 3, 7]
