"""``ams serve`` and the single-role commands: ``ams mx``, ``submission``,
``gateway`` and ``worker``.

``ams serve`` runs every role that exists over one store in one process,
which is the embedded default for a single machine.  With ``--root`` and no
config file yet it creates the store, a config beside it and a demo user,
and says so.  Ctrl-C or SIGTERM stops everything cleanly; the workers finish
the message in hand and release their claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ams.cli._commands import init_config, write_config
from ams.config import Config, load_config
from ams.errors import UsageError
from ams.store import Store, UserRegistry

log = logging.getLogger("ams.serve")

DEMO_USER = "demo"
DEMO_DOMAIN = "example.test"


def _config_for_serve(args: argparse.Namespace) -> Config:
    """The config to serve: the one given, or a demo site under --root."""
    if args.root is None:
        return load_config(args.config)
    root = Path(args.root).resolve()
    path = Path(args.config) if args.config else root.parent / "ams.toml"
    if not path.exists():
        # The demo listens on 127.0.0.1 only and has no certificate, so it
        # allows password login without TLS; a real site sets [tls].
        cfg = init_config(root, [DEMO_DOMAIN], cache_dir=root.parent / "cache",
                          plaintext_auth=True)
        write_config(path, cfg, force=False)
        print(f"created config {path.resolve()}")
    cfg = load_config(path)
    if cfg.store.root.resolve() != root:
        raise UsageError(f"{path} is for store {cfg.store.root}, not {root}")
    return cfg


def _ensure_store(cfg: Config) -> None:
    fresh = not (cfg.store.root / "store.json").exists()
    store = Store.initialise(cfg)
    if not fresh:
        return
    password = secrets.token_urlsafe(12)
    UserRegistry(store).add(DEMO_USER, password)
    pw_file = cfg.store.root.parent / "demo-password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    domain = cfg.mail.domains[0] if cfg.mail.domains else DEMO_DOMAIN
    print(f"created store {cfg.store.root} with user {DEMO_USER} <{DEMO_USER}@{domain}>, "
          f"password {password} (also in {pw_file})")


def _with_listen(cfg: Config, smtp: str | None = None, imap: str | None = None,
                 submission: str | None = None) -> Config:
    if submission:
        cfg = cfg.replace(listen=dataclasses.replace(cfg.listen, submission=submission))
    if smtp:
        cfg = cfg.replace(listen=dataclasses.replace(cfg.listen, smtp=smtp))
    if imap:
        cfg = cfg.replace(listen=dataclasses.replace(cfg.listen, imap=imap))
    return cfg


async def serve_all(cfg: Config, *, workers: int, gateways: int = 1,
                    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
    """Every available role over ``cfg``'s store; reports the listen addresses."""
    from ams.imap import serve_imap
    from delivery import serve_workers
    from gateways import serve_gateways, serve_mx, serve_submission

    async with trio.open_nursery() as nursery:
        pool = await nursery.start(functools.partial(serve_workers, cfg, count=workers))
        listeners = await nursery.start(functools.partial(serve_mx, cfg, on_queued=pool.wake))
        imap = await nursery.start(functools.partial(serve_imap, cfg))
        from bboard import serve_expiry
        await nursery.start(serve_expiry, cfg)  # every bboard.expire_interval seconds
        outbound = await nursery.start(functools.partial(serve_gateways, cfg, count=gateways))

        def queued(queue: str) -> None:
            (pool if queue == "in" else outbound).wake()

        submission = await nursery.start(functools.partial(serve_submission, cfg,
                                                           on_queued=queued))
        addrs = {"smtp": _addr(listeners[0]), "imap": _addr(imap[0]),
                 "submission": _addr(submission[0])}
        task_status.started(addrs)


def _addr(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"{host}:{port}"


async def _until_signalled(cfg: Config, workers: int, gateways: int = 1) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(functools.partial(serve_all, cfg, workers=workers,
                                                          gateways=gateways))
            domain = cfg.mail.domains[0] if cfg.mail.domains else "(no local domain)"
            print(f"AMS serving store {cfg.store.root} as host {cfg.host.name}")
            print(f"  SMTP (MX) for {', '.join(cfg.mail.domains) or domain}: {addrs['smtp']}")
            print(f"  IMAP: {addrs['imap']}")
            print(f"  submission (AUTH required): {addrs['submission']}")
            print(f"  delivery workers: {workers}")
            print(f"  outbound gateways: {gateways}")
            every = cfg.bboard.expire_interval
            print("  bboards: expiry " + (f"every {every:g} s" if every > 0 else "off"))
            print("Ctrl-C stops.", flush=True)
            async for _ in signals:
                print("stopping…", flush=True)
                nursery.cancel_scope.cancel()
                break


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _with_listen(_config_for_serve(args), args.listen_smtp, args.listen_imap,
                       args.listen_submission)
    _ensure_store(cfg)
    _logging()
    check_filesystem(cfg)
    if args.gateways < 1:
        raise UsageError("--gateways must be at least 1")
    trio.run(_until_signalled, cfg, args.workers, args.gateways)
    return 0


def check_filesystem(cfg: Config) -> None:
    """Refuse to run a role on a filesystem ``ams doctor`` found (or, on a
    network or FUSE filesystem, has not yet shown to be) unsafe for this host."""
    from ams.doctor import startup_check

    for warning in startup_check(cfg, require_verdict=cfg.store.require_doctor).warnings:
        log.warning("%s", warning)


def _serve_one(cfg: Config, serve: Callable[..., Awaitable[None]], label: str) -> int:
    """Run one listening role until SIGTERM or SIGINT, printing its address."""
    Store(cfg).check()
    _logging()
    check_filesystem(cfg)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(serve, cfg))
                print(f"{label} listening on {_addr(listeners[0])}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


def cmd_mx(args: argparse.Namespace) -> int:
    from gateways import serve_mx
    return _serve_one(_with_listen(load_config(args.config), args.listen), serve_mx,
                      "SMTP (MX)")


def cmd_imap(args: argparse.Namespace) -> int:
    from ams.imap import serve_imap
    return _serve_one(_with_listen(load_config(args.config), imap=args.listen), serve_imap,
                      "IMAP")


def cmd_submission(args: argparse.Namespace) -> int:
    from gateways import serve_submission
    return _serve_one(_with_listen(load_config(args.config), submission=args.listen),
                      serve_submission, "SMTP submission")


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateways import gateway_main
    cfg = load_config(args.config)
    check_filesystem(cfg)
    return gateway_main(cfg, args.count)


def cmd_worker(args: argparse.Namespace) -> int:
    from delivery import worker_main
    cfg = load_config(args.config)
    check_filesystem(cfg)
    return worker_main(cfg, args.count)


def cmd_deliver(args: argparse.Namespace) -> int:
    from delivery import deliver_command
    return deliver_command(args.config, args.recipient, args.sender)


def _logging() -> None:
    from delivery import default_logging
    default_logging()
    logging.getLogger("gateways").setLevel(logging.getLogger("delivery").level)
    logging.getLogger("ams.imap").setLevel(logging.getLogger("delivery").level)


__all__ = ["cmd_deliver", "cmd_gateway", "cmd_imap", "cmd_mx", "cmd_serve", "cmd_submission",
           "cmd_worker", "serve_all"]
