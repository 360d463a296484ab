"""Routing outgoing mail: the static route table, MX selection (preference,
null MX, implicit MX), and dnspython's async resolver under trio against a
small DNS server started in the test on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio

from ams.config import OutboundConfig
from gateways._routes import Hop, Route, Router, literal_route, parse_hops, select_mx, static_route


def test_parse_hops() -> None:
    assert parse_hops("mx.a.test") == (Hop("mx.a.test", 25),)
    assert parse_hops("127.0.0.1:2525, [::1]:26 ,b.test") == (
        Hop("127.0.0.1", 2525), Hop("::1", 26), Hop("b.test", 25))
    assert str(Hop("::1", 26)) == "[::1]:26"
    for bad in ("", "a:b", "a:0", "a:70000", ":25", "[::1]x"):
        with pytest.raises(ValueError):
            parse_hops(bad)


def test_static_routes_exact_then_parent_then_smarthost() -> None:
    routes = {"One.Test.": "h1:1", ".sub.test": "h2:2", "sub.test": "h3:3"}
    assert static_route("one.test", routes, "") == Route((Hop("h1", 1),), source="route")
    assert static_route("a.b.sub.test", routes, "").hops == (Hop("h2", 2),)
    assert static_route("SUB.test", routes, "").hops == (Hop("h3", 3),)
    assert static_route("other.test", routes, "") is None
    assert static_route("other.test", routes, "relay:587").hops == (Hop("relay", 587),)


def test_address_literals() -> None:
    assert literal_route("[192.0.2.1]").hops == (Hop("192.0.2.1"),)  # type: ignore[union-attr]
    assert literal_route("[IPv6:2001:db8::1]").hops == (Hop("2001:db8::1"),)  # type: ignore
    bad = literal_route("[nonsense]")
    assert bad is not None and bad.failure is not None and bad.failure.code == "5.1.2"
    assert literal_route("example.test") is None


def test_mx_selection_orders_by_preference_and_shuffles_ties() -> None:
    records = [(20, "c.test."), (10, "b.test."), (10, "a.test."), (30, "c.test")]
    seen = set()
    for seed in range(20):
        route = select_mx("d.test", records, rng=random.Random(seed))
        hosts = [h.host for h in route.hops]
        assert hosts[2:] == ["c.test"] and sorted(hosts[:2]) == ["a.test", "b.test"]
        assert all(h.port == 25 for h in route.hops)
        seen.add(tuple(hosts[:2]))
    assert len(seen) == 2  # equal preferences really are shuffled


def test_null_mx_and_implicit_mx() -> None:
    null = select_mx("nomail.test", [(0, ".")])
    assert null.hops == () and null.failure is not None
    assert (null.failure.status, null.failure.code) == ("failed", "5.1.10")
    # A "." next to real exchanges is ignored (RFC 7505 3).
    assert select_mx("d.test", [(0, "."), (10, "mx.d.test")]).hops == (Hop("mx.d.test"),)
    implicit = select_mx("Plain.Test.", [])
    assert implicit.hops == (Hop("plain.test"),) and implicit.source == "implicit"


# -- a DNS server on loopback ----------------------------------------------------------

ZONE: dict[tuple[str, str], list[str]] = {
    ("mail.test.", "MX"): ["20 mx2.mail.test.", "10 mx1.mail.test."],
    ("mx1.mail.test.", "A"): ["127.0.0.1"],
    ("nomail.test.", "MX"): ["0 ."],
    ("plain.test.", "A"): ["127.0.0.1"],
    ("noaddr.test.", "TXT"): ['"nothing here"'],
}
SERVFAIL = "broken.test."


@asynccontextmanager
async def dns_server() -> AsyncIterator[tuple[int, list[str]]]:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    asked: list[str] = []

    async def serve() -> None:
        while True:
            data, addr = await sock.recvfrom(4096)
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            question = q.question[0]
            name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
            asked.append(f"{name} {rdtype}")
            if name == SERVFAIL:
                r.set_rcode(dns.rcode.SERVFAIL)
            elif not any(n == name for n, _ in ZONE):
                r.set_rcode(dns.rcode.NXDOMAIN)
            elif (name, rdtype) in ZONE:
                r.answer.append(dns.rrset.from_text_list(name, 300, "IN", rdtype,
                                                         ZONE[name, rdtype]))
            r.flags |= dns.flags.AA
            await sock.sendto(r.to_wire(), addr)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        yield sock.getsockname()[1], asked
        nursery.cancel_scope.cancel()
    sock.close()


def router(port: int, **cfg: object) -> Router:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.retry_servfail = False
    return Router(OutboundConfig(dns_timeout=2.0, **cfg), resolver=res,  # type: ignore[arg-type]
                  rng=random.Random(1))


async def test_mx_lookup_with_dnspython_under_trio() -> None:
    async with dns_server() as (port, asked):
        r = router(port, routes={"routed.test": "127.0.0.1:2525"})
        mx = await r.route("Mail.Test")
        assert [h.host for h in mx.hops] == ["mx1.mail.test", "mx2.mail.test"]
        assert mx.source == "mx" and mx.failure is None
        assert (await r.route("mail.test")) == mx and asked.count("mail.test. MX") == 1  # cached
        null = await r.route("nomail.test")
        assert null.failure is not None and null.failure.code == "5.1.10"
        plain = await r.route("plain.test")
        assert plain.hops == (Hop("plain.test"),) and plain.source == "implicit"
        for name in ("missing.test", "noaddr.test"):
            gone = await r.route(name)
            assert gone.failure is not None and gone.failure.status == "failed"
            assert gone.failure.code == "5.1.2"
        broken = await r.route("broken.test")
        assert broken.failure is not None and broken.failure.status == "deferred"
        assert broken.failure.code == "4.4.3"
        routed = await r.route("routed.test")
        assert routed.hops == (Hop("127.0.0.1", 2525),) and "routed.test. MX" not in asked


async def test_dns_off_without_a_route_is_temporary() -> None:
    r = Router(OutboundConfig(dns=False))
    route = await r.route("anywhere.test")
    assert route.failure is not None and route.failure.status == "deferred"
    assert route.failure.code == "4.4.4"


def test_bad_routes_are_refused_when_the_router_is_built() -> None:
    with pytest.raises(ValueError):
        Router(OutboundConfig(routes={"a.test": "host:notaport"}))
