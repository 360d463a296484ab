"""Outgoing mail end to end: submission -> spool -> outbound gateways -> a
receiving SMTP server on loopback (our own SMTP server with a recording
policy: a real server on a real socket), reached through the static route
table; local recipients and bounces through the delivery workers."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import functools
import io
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trustme

from ams.cli import main as ams_main
from ams.config import Config, config_from_dict
from ams.protocols.smtp import EndOfData, MailFrom, RcptTo, Reply
from ams.store import Place, Spool, Store, UserRegistry, fold
from ams.store.outqueue import DeferredQueue, OutboundState
from delivery import serve_workers
from gateways import GatewayOptions, serve_gateways, serve_submission
from gateways._smtp_server import Policy, ServerOptions, Session, SMTPServer, serve_smtp
from tests.mx_helpers import FAST_HASHER, add_users

FAST = GatewayOptions(idle_max=0.2, promote_every=0.1, retry_local=0.2)
WAIT = 30.0


# -- the remote side -------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    tls: bool
    helo: str


@dataclass
class SinkPolicy(Policy):
    """Records what it accepts; answers from scripted replies.

    ``rcpt_replies[address]``: replies for successive RCPTs of that address
    (the last one repeats; none: accept).  ``data_replies``: replies for
    successive ends of data (none left: accept).
    """

    hostname: str = "sink.test"
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, list[Reply]] = field(default_factory=dict)
    data_replies: list[Reply] = field(default_factory=list)
    on_message: Callable[[Received], None] | None = None
    changed: trio.Event = field(default_factory=trio.Event)

    async def mail_from(self, s: Session, ev: MailFrom) -> Reply | None:
        return None

    async def rcpt_to(self, s: Session, ev: RcptTo) -> Reply | None:
        script = self.rcpt_replies.get(ev.address.lower())
        if not script:
            return None
        reply = script[0] if len(script) == 1 else script.pop(0)
        return None if reply.is_positive else reply

    async def message(self, s: Session, ev: EndOfData, data: bytes) -> Reply:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if not reply.is_positive:
                return reply
        got = Received(ev.mail_from, list(ev.recipients), data, s.tls, s.helo)
        self.messages.append(got)
        if self.on_message is not None:
            self.on_message(got)
        self.changed.set()
        self.changed = trio.Event()
        return Reply(250, "2.0.0", f"OK sink accepted #{len(self.messages)}")

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Received]:
        with trio.fail_after(timeout):
            while len(self.messages) < count:
                await self.changed.wait()
        return self.messages

    def to(self, rcpt: str) -> list[Received]:
        return [m for m in self.messages if rcpt in m.rcpts]


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@asynccontextmanager
async def sink(policy: SinkPolicy | None = None, *, port: int = 0,
               tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[SinkPolicy, int]]:
    policy = policy or SinkPolicy()
    options = ServerOptions(hostname=policy.hostname, max_size=10_000_000, max_line=1000,
                            max_recipients=100, max_bad_commands=10, max_connections=100,
                            command_timeout=30, data_timeout=30, ssl_context=tls)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_smtp, SMTPServer(options, policy),
                                        f"127.0.0.1:{port}")
        yield policy, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- our side ----------------------------------------------------------------------------


def make_config(tmp_path: Path, routes: dict[str, str], **outbound: Any) -> Config:
    return config_from_dict({
        "store": {"root": str(tmp_path / "store"), "fsync": "never", "lease_seconds": 5.0,
                  "clock_skew": 0.5},
        "host": {"name": "h1", "cache_dir": str(tmp_path / "cache")},
        "mail": {"domains": ["example.test"]},
        "tls": {"allow_plaintext_auth": True},
        "outbound": {"routes": routes, "dns": False, "retry_schedule": [0.3],
                     "bucket_seconds": 1, "connect_timeout": 5.0, "command_timeout": 10.0,
                     "data_timeout": 10.0, **outbound},
    })


@asynccontextmanager
async def running(config: Config, *, workers: bool = True, gateways: int = 1,
                  ) -> AsyncIterator[int]:
    """Submission, gateways and (optionally) delivery workers; yields the submission port."""
    async with trio.open_nursery() as nursery:
        pool = await nursery.start(functools.partial(serve_workers, config, count=1)) \
            if workers else None
        gw = await nursery.start(functools.partial(serve_gateways, config, count=gateways,
                                                   options=FAST))

        def queued(queue: str) -> None:
            if queue == "out":
                gw.wake()
            elif pool is not None:
                pool.wake()

        users = UserRegistry(Store(config), hasher=FAST_HASHER)
        listeners = await nursery.start(functools.partial(
            serve_submission, config, listen="127.0.0.1:0", on_queued=queued, users=users))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def submit(port: int, sender: str, rcpts: list[str], body: bytes, *, user: str = "alice",
           password: str | None = None) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.login(user, password or f"{user}-pw")
        return s.sendmail(sender, rcpts, body)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def inbox(store: Store, user: str, mailbox: str = "INBOX") -> list[bytes]:
    lg = UserRegistry(store).mailboxes(user).open(mailbox)
    st = fold(lg.reader())
    return [lg.read_message(st.messages[u].location) for u in sorted(st.messages)]


async def wait_until(cond: Callable[[], Any], timeout: float = WAIT) -> Any:
    with trio.fail_after(timeout):
        while True:
            got = await trio.to_thread.run_sync(cond)
            if got:
                return got
            await trio.sleep(0.05)


def spool_empty(store: Store) -> bool:
    spool = Spool(store)
    return not any(spool.depth(q, p) for q in ("in", "out") for p in (Place.QUEUED,
                                                                      Place.CLAIMED))


MSG = b"From: alice@example.test\r\nSubject: outgoing\r\n\r\nhello world\r\n.dot line\r\n"


# -- tests -------------------------------------------------------------------------------


async def test_one_submission_to_two_remote_domains_and_a_local_user(tmp_path: Path) -> None:
    ca = trustme.CA()
    async with sink(tls=tls_context(ca)) as (one, port1), sink() as (two, port2):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}",
                                     "two.test": f"127.0.0.1:{port2}"})
        store = Store.initialise(cfg)
        add_users(store, "alice", "bob")
        async with running(cfg) as port:
            refused = await in_thread(submit, port, "alice@example.test",
                                      ["x@one.test", "y@one.test", "z@two.test",
                                       "bob@example.test"], MSG)
            assert refused == {}
            (m1,) = await one.wait_for(1)
            (m2,) = await two.wait_for(1)
            (local,) = await wait_until(lambda: inbox(store, "bob"))
            await wait_until(lambda: spool_empty(store))
    # One transaction per domain, both recipients of one.test in it.
    assert m1.rcpts == ["x@one.test", "y@one.test"] and m2.rcpts == ["z@two.test"]
    assert m1.mail_from == m2.mail_from == "alice@example.test"
    assert m1.tls and not m2.tls  # STARTTLS used where it was offered
    assert m1.helo == "h1"
    assert b"\r\n.dot line\r\n" in m1.data and b"..dot" not in m1.data  # stuffed, unstuffed
    msg = email.message_from_bytes(m1.data, policy=email.policy.SMTP)
    assert msg["Message-ID"] and msg["Date"]  # added at submission
    assert "with ESMTPSA" in msg["Received"]
    assert m2.data == m1.data
    assert local.endswith(m1.data)
    assert b"Delivered-To: bob@example.test" in local
    assert len(one.messages) == 1 and len(two.messages) == 1


async def test_temporary_failure_then_success_delivers_once(tmp_path: Path) -> None:
    policy = SinkPolicy(rcpt_replies={"x@one.test": [Reply(451, "4.3.0", "try later"),
                                                     Reply(250, "2.1.5", "ok")]})
    async with sink(policy) as (one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        add_users(store, "alice")
        async with running(cfg, workers=False) as port:
            await in_thread(submit, port, "alice@example.test", ["x@one.test"], MSG)
            deferred = DeferredQueue(Spool(store), bucket_seconds=1)
            await one.wait_for(1)
            await wait_until(lambda: spool_empty(store) and deferred.depth() == 0)
            await trio.sleep(0.5)  # room for a wrong second delivery to show
    assert len(one.messages) == 1 and one.messages[0].rcpts == ["x@one.test"]


async def test_one_recipient_deferred_only_it_is_retried(tmp_path: Path) -> None:
    policy = SinkPolicy(rcpt_replies={"slow@one.test": [Reply(452, "4.2.2", "mailbox full"),
                                                        Reply(250, "2.1.5", "ok")]})
    async with sink(policy) as (one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        add_users(store, "alice")
        async with running(cfg, workers=False) as port:
            await in_thread(submit, port, "alice@example.test", ["fast@one.test",
                                                                 "slow@one.test"], MSG)
            msgs = await one.wait_for(2)
            await wait_until(lambda: spool_empty(store))
    assert [m.rcpts for m in msgs] == [["fast@one.test"], ["slow@one.test"]]


async def test_permanent_failure_bounces_to_the_senders_inbox(tmp_path: Path) -> None:
    policy = SinkPolicy(rcpt_replies={"nobody@one.test": [
        Reply(550, "5.1.1", "nobody: no such user on the sink")]})
    async with sink(policy) as (one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        add_users(store, "alice")
        async with running(cfg) as port:
            await in_thread(submit, port, "alice@example.test",
                            ["nobody@one.test", "ok@one.test"], MSG)
            (delivered,) = await one.wait_for(1)
            (bounce,) = await wait_until(lambda: inbox(store, "alice"))
            await wait_until(lambda: spool_empty(store))
    assert delivered.rcpts == ["ok@one.test"]
    dsn = email.message_from_bytes(bounce, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert b"Return-Path: <>" in bounce  # a bounce has the null sender
    human, status, headers = dsn.get_payload()
    assert "nobody: no such user on the sink" in human.get_content()
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; h1"
    assert per_rcpt["Final-Recipient"] == "rfc822; nobody@one.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert "550 5.1.1 nobody: no such user on the sink" in per_rcpt["Diagnostic-Code"]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: outgoing" in headers.get_payload()


async def test_remote_down_is_deferred_then_delivered_when_it_is_back(tmp_path: Path) -> None:
    port1 = free_port()
    cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"}, retry_schedule=[1.0])
    store = Store.initialise(cfg)
    add_users(store, "alice")
    spool = Spool(store)
    deferred = DeferredQueue(spool, bucket_seconds=1)
    async with running(cfg, workers=False) as port:
        await in_thread(submit, port, "alice@example.test", ["x@one.test"], MSG)
        (entry,) = await wait_until(lambda: list(deferred.list_entries()))
        env = entry.info.envelope
        assert env is not None and OutboundState.of(env).tries >= 1
        assert entry.info.attempts == 0  # the spool's count: no crash, no local error
        last = OutboundState.of(env).last["x@one.test"]
        assert last.status == "deferred" and "connect" in last.reply
        async with sink(port=port1) as (one, _):
            (m,) = await one.wait_for(1)
            await wait_until(lambda: spool_empty(store) and deferred.depth() == 0)
    assert m.rcpts == ["x@one.test"]


async def test_expired_message_bounces_with_4_4_7(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{free_port()}"}, max_age=1.0,
                      retry_schedule=[0.3])
    store = Store.initialise(cfg)
    add_users(store, "alice")
    async with running(cfg) as port:
        await in_thread(submit, port, "alice@example.test", ["x@one.test"], MSG)
        (bounce,) = await wait_until(lambda: inbox(store, "alice"))
        await wait_until(lambda: spool_empty(store))
    dsn = email.message_from_bytes(bounce, policy=email.policy.default)
    _, per_rcpt = dsn.get_payload()[1].get_payload()
    assert per_rcpt["Status"] == "4.4.7" and per_rcpt["Action"] == "failed"
    assert per_rcpt["Diagnostic-Code"].startswith("x-ams; gave up after 1 seconds: ")
    assert "Connection refused" in per_rcpt["Diagnostic-Code"]


async def test_null_sender_is_never_bounced(tmp_path: Path) -> None:
    policy = SinkPolicy(rcpt_replies={"x@one.test": [Reply(550, "5.1.1", "no")]})
    async with sink(policy) as (_one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        add_users(store, "alice")
        spool = Spool(store)
        await in_thread(functools.partial(spool.enqueue, "out", mail_from="",
                                          rcpt_to=["x@one.test"], message=MSG))
        async with running(cfg, workers=False):
            await wait_until(lambda: spool_empty(store))
    assert spool.depth("in") == 0 and spool.depth("out") == 0  # no DSN anywhere
    assert spool.depth("out", Place.FAILED) == 0


async def test_remote_sender_gets_its_bounce_through_the_outgoing_queue(tmp_path: Path) -> None:
    policy = SinkPolicy(rcpt_replies={"x@one.test": [Reply(554, "5.7.1", "refused")]})
    async with sink(policy) as (one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        spool = Spool(store)
        # A forward queued by a delivery worker keeps the remote sender.
        await in_thread(functools.partial(spool.enqueue, "out", mail_from="someone@one.test",
                                          rcpt_to=["x@one.test"], message=MSG))
        async with running(cfg, workers=False):
            (dsn,) = await one.wait_for(1)
            await wait_until(lambda: spool_empty(store))
    assert dsn.mail_from == "" and dsn.rcpts == ["someone@one.test"]
    assert b"multipart/report" in dsn.data


async def test_queue_commands_on_the_deferred_queue(tmp_path: Path) -> None:
    port1 = free_port()
    cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"}, retry_schedule=[3600.0])
    store = Store.initialise(cfg)
    add_users(store, "alice")
    conf = tmp_path / "ams.toml"
    conf.write_text(f'[store]\nroot = "{cfg.store.root}"\nfsync = "never"\n'
                    f'[host]\nname = "h1"\ncache_dir = "{tmp_path / "cache"}"\n'
                    '[mail]\ndomains = ["example.test"]\n'
                    f'[outbound]\nbucket_seconds = 1\nroutes = {{"one.test" = '
                    f'"127.0.0.1:{port1}"}}\n')
    deferred = DeferredQueue(Spool(store), bucket_seconds=1)

    def cli(*argv: str) -> tuple[int, str]:
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, encoding="utf-8")
        with redirect_stdout(out):
            code = ams_main(["--config", str(conf), *argv])
        out.flush()
        return code, raw.getvalue().decode()

    async with running(cfg, workers=False) as port:
        for n in range(2):
            await in_thread(submit, port, "alice@example.test", [f"x{n}@one.test"], MSG)
        entries = await wait_until(lambda: (e := list(deferred.list_entries()))
                                   and len(e) == 2 and e)
    ids = sorted(e.info.id for e in entries)
    code, out = await in_thread(cli, "queue", "list", "--queue", "deferred")
    assert code == 0 and all(i in out for i in ids) and "tries 1" in out
    code, out = await in_thread(cli, "queue", "show", "--queue", "deferred", ids[0])
    assert code == 0 and "pending, last: (4.4.1)" in out and "Subject: outgoing" in out
    code, out = await in_thread(cli, "queue", "delete", "--queue", "deferred", ids[0])
    assert code == 0 and deferred.depth() == 1
    code, out = await in_thread(cli, "queue", "retry", "--queue", "deferred", ids[1])
    assert code == 0 and deferred.depth() == 0
    assert [e.id for e in Spool(store).list_entries("out")] == [ids[1]]
    code, out = await in_thread(cli, "queue", "retry", "--queue", "deferred", ids[1])
    assert code == 1
    code, out = await in_thread(cli, "status")
    assert "queue deferred: queued 0" in out and "queue out: queued 1" in out


async def test_two_gateways_share_the_queue_and_deliver_each_message_once(
        tmp_path: Path) -> None:
    async with sink() as (one, port1):
        cfg = make_config(tmp_path, {"one.test": f"127.0.0.1:{port1}"})
        store = Store.initialise(cfg)
        add_users(store, "alice")
        async with running(cfg, workers=False, gateways=2) as port:
            assert len([w for w in Spool(store).live_workers("out")]) == 2
            for n in range(20):
                await in_thread(submit, port, "alice@example.test", [f"r{n}@one.test"], MSG)
            await one.wait_for(20)
            await wait_until(lambda: spool_empty(store))
            await trio.sleep(0.3)
    assert sorted(m.rcpts[0] for m in one.messages) == sorted(f"r{n}@one.test"
                                                              for n in range(20))


def test_config_rejects_bad_outbound_settings(tmp_path: Path) -> None:
    import pytest

    from ams.errors import ConfigError
    base = {"store": {"root": str(tmp_path)}}
    for outbound, key in (({"bucket_seconds": 7}, "bucket_seconds"),
                          ({"retry_schedule": []}, "retry_schedule"),
                          ({"routes": {"a.test": 25}}, "routes.a.test"),
                          ({"nonsense": 1}, "outbound.nonsense")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({**base, "outbound": outbound})
    cfg = config_from_dict({**base, "outbound": {"routes": {"a.test": "h:2525"}}})
    assert dataclasses.asdict(cfg.outbound)["routes"] == {"a.test": "h:2525"}
