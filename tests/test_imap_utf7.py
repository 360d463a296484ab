"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): known encodings, a
hypothesis round trip over arbitrary Unicode, and the malformed names the
decoder must refuse (each would otherwise be a second spelling of a name)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams.protocols.imap import MailboxNameError, decode_mailbox_name, encode_mailbox_name

KNOWN = [
    ("", ""),
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),     # RFC 3501 §5.1.3
    ("☺☺", "&JjomOg-"),
    ("😀", "&2D3eAA-"),                       # a surrogate pair in one shift
    ("a\x01b", "a&AAE-b"),                    # control characters are not direct
    ("\x7f", "&AH8-"),
    ("Ünïcödé/&/x", "&ANw-n&AO8-c&APY-d&AOk-/&-/x"),
]


@pytest.mark.parametrize(("name", "wire"), KNOWN)
def test_known_encodings(name: str, wire: str) -> None:
    assert encode_mailbox_name(name) == wire
    assert decode_mailbox_name(wire) == name
    assert decode_mailbox_name(wire.encode("ascii")) == name


@given(st.text())
@settings(max_examples=500)
def test_round_trip_over_arbitrary_unicode(name: str) -> None:
    wire = encode_mailbox_name(name)
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode_mailbox_name(wire) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_ascii_stands_for_itself(name: str) -> None:
    assert encode_mailbox_name(name) == name.replace("&", "&-")


@given(st.binary(max_size=20))
def test_decode_never_raises_anything_but_the_name_error(raw: bytes) -> None:
    try:
        name = decode_mailbox_name(raw)
    except MailboxNameError:
        return
    assert encode_mailbox_name(name) == raw.decode("ascii")


MALFORMED = [
    "&",              # shift never ends
    "a&",
    "&Jjo",           # unterminated
    "&Jjo!",          # "!" is not modified base64, and no "-"
    "&Jjo!-",
    "&Jj/-",          # "/" is ",": standard base64 is not accepted
    "&Jjo=-",         # no padding in modified base64
    "&AGE-",          # "a" must stand for itself
    "&ACY-",          # "&" must be "&-"
    "&ACA-",          # a space in base64
    "&Jjo-&Jjo-",     # two shifts where one suffices
    "&JjoA-",         # an odd octet: not whole UTF-16 units
    "&Jj-",           # 12 bits: not one UTF-16 unit
    "&JjomOgA-",      # extra zero bits beyond the padding
    "&Jjp-",          # non-zero padding bits
    "&2D0-",          # a lone high surrogate
    "&3gA-",          # a lone low surrogate
    "&3gDYPQ-",       # surrogates in the wrong order
    "é",              # 8-bit: never direct
    "a\tb",           # control characters are never direct
    "a\x7f",
    "x&Jjo-y-&",      # trailing garbage
]


@pytest.mark.parametrize("wire", MALFORMED)
def test_malformed_names_are_refused(wire: str) -> None:
    with pytest.raises(MailboxNameError):
        decode_mailbox_name(wire)


def test_8bit_bytes_are_refused() -> None:
    with pytest.raises(MailboxNameError):
        decode_mailbox_name("Entwürfe".encode())


def test_encode_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        encode_mailbox_name("a\ud800b")


def test_the_error_is_a_value_error() -> None:
    assert issubclass(MailboxNameError, ValueError)
