"""Where mail for a domain goes: static routes, a smarthost, or the domain's MX.

Theory of operation
-------------------
For each recipient domain, in this order:

1. ``outbound.routes``: the domain itself (case-insensitive, trailing dot
   ignored), then each parent written with a leading dot (``.example.org``
   covers ``a.b.example.org``).  A route is one or more ``HOST[:PORT]``
   separated by commas, tried in order.
2. ``outbound.smarthost``, if set: everything else goes there.
3. DNS, if ``outbound.dns``: the MX records (dnspython's async resolver,
   which runs under trio), lowest preference first and shuffled within a
   preference (RFC 5321 5.1).  A domain whose only MX is ``.`` accepts no
   mail (null MX, RFC 7505): its recipients fail at once with ``5.1.10``.
   A domain with no MX but an address record is its own mail host (the
   implicit MX); with neither, or a name that does not exist, recipients
   fail with ``5.1.2``.  A DNS timeout or server failure is temporary
   (``4.4.3``): the message is retried later.
4. none of these: temporary ``4.4.4`` (no route), so mail waits while an
   operator fixes the config rather than bouncing.

Address literals (``user@[192.0.2.1]``) go to that address.  MX answers are
cached for their TTL (at most :data:`MX_CACHE_MAX` seconds), so a burst of
mail to one domain costs one lookup.  :func:`select_mx` is the pure part
(tested without DNS); :class:`Router` does the lookups.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ams.config import OutboundConfig
from ams.store.outqueue import Result

log = logging.getLogger("gateways.outbound")

MX_CACHE_MAX = 300.0
MX_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Hop:
    host: str
    port: int = 25

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Route:
    """The hosts to try for a domain, or why there are none."""

    hops: tuple[Hop, ...] = ()
    #: A failed or deferred result for every recipient of the domain.
    failure: Result | None = None
    #: Where the route came from: route, smarthost, mx, implicit, literal.
    source: str = ""


def parse_hops(spec: str) -> tuple[Hop, ...]:
    """``"a.example:2525, [::1]:25, b"`` -> hops (port 25 when none is given)."""
    hops: list[Hop] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest and "?"  # "?": junk after "]"
        elif part.count(":") == 1:
            host, _, port = part.partition(":")
        else:
            host, port = part, ""
        if not host or (port and not port.isdigit()) or not 0 < int(port or 25) < 65536:
            raise ValueError(f"bad route host {part!r}: expected HOST[:PORT]")
        hops.append(Hop(host, int(port or 25)))
    if not hops:
        raise ValueError(f"empty route {spec!r}")
    return tuple(hops)


def normal_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def static_route(domain: str, routes: Mapping[str, str], smarthost: str) -> Route | None:
    """The configured route for ``domain`` (routes, then smarthost), if any."""
    d = normal_domain(domain)
    table = {normal_domain(k) if not k.startswith(".") else "." + normal_domain(k[1:]): v
             for k, v in routes.items()}
    if d in table:
        return Route(parse_hops(table[d]), source="route")
    labels = d.split(".")
    for i in range(1, len(labels)):
        key = "." + ".".join(labels[i:])
        if key in table:
            return Route(parse_hops(table[key]), source="route")
    if smarthost:
        return Route(parse_hops(smarthost), source="smarthost")
    return None


def literal_route(domain: str) -> Route | None:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` -> that address; None otherwise."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        addr = ipaddress.ip_address(inner)
    except ValueError:
        return Route(failure=_fail("5.1.2", f"bad address literal {domain}"), source="literal")
    return Route((Hop(str(addr)),), source="literal")


def select_mx(domain: str, records: Sequence[tuple[int, str]], *,
              rng: random.Random | None = None) -> Route:
    """Hosts to try from MX ``records`` (preference, exchange); null MX fails."""
    if not records:
        return Route((Hop(normal_domain(domain)),), source="implicit")
    real = [(p, normal_domain(x)) for p, x in records if normal_domain(x)]
    if not real:
        return Route(failure=_fail("5.1.10", f"{domain} accepts no mail (null MX)"),
                     source="mx")
    shuffle = (rng or random).shuffle
    by_pref: dict[int, list[str]] = {}
    for pref, host in real:
        if host not in by_pref.setdefault(pref, []):
            by_pref[pref].append(host)
    hosts: list[str] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        shuffle(group)
        hosts.extend(h for h in group if h not in hosts)
    return Route(tuple(Hop(h) for h in hosts), source="mx")


def _fail(code: str, why: str) -> Result:
    status = "failed" if code.startswith("5") else "deferred"
    return Result(status, code, why, "", time.time_ns() // 1000)


class Router:
    """Routes for domains, with dnspython for the MX lookups."""

    def __init__(self, config: OutboundConfig, *, resolver: Any = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        for spec in (*config.routes.values(), *([config.smarthost] if config.smarthost else [])):
            parse_hops(spec)  # a bad route is a config error now, not at first use
        self._resolver = resolver
        self.rng = rng or random.Random()
        self._cache: dict[str, tuple[float, Route]] = {}

    def _dns(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver
            self._resolver = dns.asyncresolver.Resolver(configure=True)
        return self._resolver

    async def route(self, domain: str) -> Route:
        literal = literal_route(domain)
        if literal is not None:
            return literal
        found = static_route(domain, self.config.routes, self.config.smarthost)
        if found is not None:
            return found
        if not self.config.dns:
            return Route(failure=_fail("4.4.4", f"no route to {domain} (DNS is off)"))
        key = normal_domain(domain)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        route, ttl = await self._lookup(key)
        if ttl > 0:
            if len(self._cache) >= MX_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (now + min(ttl, MX_CACHE_MAX), route)
        return route

    async def _lookup(self, domain: str) -> tuple[Route, float]:
        """(route, seconds it may be cached) from DNS."""
        import dns.exception
        import dns.resolver
        timeout = self.config.dns_timeout
        try:
            res = self._dns()
            answer = await res.resolve(domain, "MX", lifetime=timeout, search=False)
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True))
                       for r in answer]
            return select_mx(domain, records, rng=self.rng), float(answer.rrset.ttl)
        except dns.resolver.NXDOMAIN:
            return Route(failure=_fail("5.1.2", f"domain {domain} does not exist")), 60.0
        except dns.resolver.NoAnswer:
            pass
        except (dns.exception.DNSException, OSError) as e:
            return Route(failure=_fail("4.4.3", f"DNS lookup of MX for {domain} failed: "
                                       f"{type(e).__name__}")), 0.0
        # No MX: the domain is its own mail host if it has an address.
        for rdtype in ("A", "AAAA"):
            try:
                answer = await res.resolve(domain, rdtype, lifetime=timeout, search=False)
                return select_mx(domain, []), float(answer.rrset.ttl)
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.NXDOMAIN:
                break
            except (dns.exception.DNSException, OSError) as e:
                return Route(failure=_fail("4.4.3", f"DNS lookup of {rdtype} for {domain} "
                                           f"failed: {type(e).__name__}")), 0.0
        return Route(failure=_fail("5.1.2", f"{domain} has no MX and no address")), 60.0


__all__ = ["Hop", "Route", "Router", "literal_route", "normal_domain", "parse_hops",
           "select_mx", "static_route"]
