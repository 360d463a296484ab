"""The fast paths of ENVELOPE give exactly what the general code gives.

A first FETCH of ENVELOPE on a big mailbox parses every header: the simple
address shapes skip the tokeniser (ams.message._address._simple) and the
wire bytes are written straight from the envelope
(ams.imap._fetch.encode_envelope).  Both must agree with the general code
on every input, byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams import message as M
from ams.imap._fetch import encode_envelope, imap_value
from ams.message import _address
from ams.protocols.imap import responses as R
from tests.test_message import CORPUS


def general(value: str) -> list[M.Address]:
    """parse_addresses without the fast path."""
    saved = _address._simple
    _address._simple = lambda v: None  # type: ignore[assignment]
    try:
        return _address.parse_addresses(value)
    finally:
        _address._simple = saved


SHAPES = ["a@b", " a@b ", "<a@b>", "Foo Bar <a@b>", "Foo   Bar<a@b>", '"Foo, Bar" <a@b>',
          '"" <a@b>', "a@b, c@d", "J. Smith <j@x.y>", "J . Smith <j@x>",
          "=?utf-8?q?J=C3=BC?= <a@b>",
          "Foo\tBar <a@b>", "a.b.c@d.e"]


@pytest.mark.parametrize("value", SHAPES)
def test_simple_shapes_take_the_fast_path_and_agree(value: str) -> None:
    fast = _address._simple(value)
    assert fast is not None, value
    assert fast == general(value)


@pytest.mark.parametrize("value", ["a @b", "x <a@b> y", '"a\\"b" <c@d>', "a@b.c (Comment)",
                                   '"x" y <a@b>', "g: a@b;", "<@r:a@b>", "a@[1.2.3.4]",
                                   'a@b, "c" <d@e>', '"Foo" <a@b>, "Bar" <c@d>', "a@b,",
                                   ",a@b"])
def test_other_shapes_go_the_long_way(value: str) -> None:
    assert _address._simple(value) is None


@settings(max_examples=3000)
@given(st.text(alphabet=list('ab."<>@,:; \t()[]\\=?'), max_size=24))
def test_fast_path_never_disagrees(value: str) -> None:
    fast = _address._simple(value)
    if fast is not None:
        assert fast == general(value)


def general_wire(env: M.Envelope, utf8: bool) -> bytes:
    return R.encode_value(imap_value(M.envelope_to_imap(env)), utf8=utf8)


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("utf8", [False, True])
def test_envelope_wire_bytes_match_the_general_encoder(name: str, utf8: bool) -> None:
    env = M.envelope(CORPUS[name])
    assert encode_envelope(env, utf8=utf8) == general_wire(env, utf8)


names = st.one_of(st.none(), st.text(max_size=12),
                  st.text(alphabet=list('a"\\ \t\x7fé\x01'), max_size=8))


@settings(max_examples=500)
@given(st.lists(st.tuples(names, names, names, names), max_size=3), names, names,
       st.booleans())
def test_envelope_wire_bytes_agree_on_any_values(addrs, date, subject, utf8) -> None:  # type: ignore[no-untyped-def]
    parsed = tuple(M.Address(*a) for a in addrs)
    env = M.Envelope(date=date, subject=subject, from_=parsed, to=parsed[:1], bcc=parsed)
    try:
        want = general_wire(env, utf8)
    except ValueError:  # NUL and the like: both refuse
        with pytest.raises(ValueError):
            encode_envelope(env, utf8=utf8)
        return
    assert encode_envelope(env, utf8=utf8) == want
