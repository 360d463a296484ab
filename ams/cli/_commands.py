"""Handlers for the ``ams`` subcommands that act on the store directly."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ams.cli._progress import Progress
from ams.config import Config, config_from_dict, default_config_path, load_config, render_config
from ams.errors import UsageError
from ams.store import MailboxList, Store, UserRegistry, validate_user_name
from ams.store.fsck import check_log
from ams.store.spool import QUEUES, Place, Spool


def open_store(args: argparse.Namespace) -> Store:
    store = Store(load_config(args.config))
    store.check()
    return store


def default_cache_dir(root: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/ams")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ams"


def write_config(path: Path, cfg: Config, *, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists already (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# AMS configuration (see README: Configuration)\n" + render_config(cfg))


def init_config(root: Path, domains: list[str], *, host_name: str | None = None,
                cache_dir: Path | None = None, lock_method: str = "fcntl",
                plaintext_auth: bool = False) -> Config:
    host: dict[str, str] = {"cache_dir": str((cache_dir or default_cache_dir(root)).resolve())}
    if host_name:
        host["name"] = host_name
    return config_from_dict({
        "store": {"root": str(root.resolve()), "lock_method": lock_method},
        "host": host, "mail": {"domains": domains},
        "tls": {"allow_plaintext_auth": plaintext_auth}})


def cmd_init(args: argparse.Namespace) -> int:
    cfg = init_config(Path(args.root), args.domains, host_name=args.host_name,
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                      lock_method=args.lock_method)
    path = default_config_path(args.config).resolve()
    write_config(path, cfg, force=args.force)
    Store.initialise(cfg)
    print(path)
    return 0


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            raise UsageError("the passwords differ")
    else:
        raise UsageError("no terminal to ask for a password: use --password-stdin")
    if not pw:
        raise UsageError("empty password")
    return pw


def cmd_user(args: argparse.Namespace) -> int:
    users = UserRegistry(open_store(args))
    if args.action in ("add", "passwd", "del", "alias"):
        validate_user_name(args.name)
    if args.action == "add":
        u = users.add(args.name, read_password(args))
        print(f"added {u.name}")
    elif args.action == "passwd":
        users.set_password(args.name, read_password(args))
        print(f"password changed for {args.name}")
    elif args.action == "list":
        for name in users.list_users():
            print(name)
    elif args.action == "del":
        users.delete(args.name, keep_mail=args.keep_mail)
        print(f"deleted {args.name}")
    elif args.action == "alias":
        if args.remove:
            users.remove_alias(args.name, args.alias)
        else:
            users.add_alias(args.name, args.alias)
        print(f"{'removed' if args.remove else 'added'} alias {args.alias} for {args.name}")
    return 0


def _mailboxes(store: Store, user: str) -> MailboxList:
    return UserRegistry(store).mailboxes(user)


def cmd_mailbox(args: argparse.Namespace) -> int:
    store = open_store(args)
    mbl = _mailboxes(store, args.user)
    if args.action == "list":
        for info in mbl.list():
            flags = " ".join(x for x in (info.special_use, "subscribed" if info.subscribed else "")
                             if x)
            print(f"{info.name}\t{info.uidvalidity}\t{flags}".rstrip())
    elif args.action == "create":
        mbl.create(args.name)
        print(f"created {args.name}")
    elif args.action == "rename":
        moved = mbl.rename(args.old, args.new)
        for old, new in moved.items():
            print(f"renamed {old} -> {new}")
    elif args.action == "delete":
        mbl.delete(args.name)
        print(f"deleted {args.name}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    store = open_store(args)
    users = UserRegistry(store)
    names = [args.user] if args.user else users.list_users()
    targets = []
    for name in names:
        mbl = users.mailboxes(name)
        for info in mbl.list():
            targets.append((f"{name}:{info.name}", mbl.open(info.name)))
    if not args.user:  # every board's two logs, too
        from bboard import Bboards

        boards = Bboards(store, users)
        for board in boards.list():
            targets.append((f"bboard {board.name}", boards.open(board)))
            targets.append((f"bboard {board.name} (pending)", boards.open_pending(board)))
    progress = Progress("fsck", len(targets), unit="logs")
    problems = remaining = records = 0
    for i, (label, log) in enumerate(targets, 1):
        rep = check_log(log, repair=args.repair)
        records += rep.records
        for p in rep.problems:
            problems += 1
            remaining += 0 if p.repaired else 1
            print(f"{label}: {p}")
        progress.update(i)
    orphans: list[Path] = [] if args.user else users.orphan_mail_dirs()
    for name in names:
        orphans += users.mailboxes(name).orphans()
    for o in orphans:
        print(f"orphan (not named by any record): {o}")
    progress.done(f"{len(targets)} logs, {records} records, {problems} problems "
                  f"({remaining} unrepaired), {len(orphans)} orphans")
    return 1 if remaining else 0


def status_report(store: Store) -> dict[str, Any]:
    spool = Spool(store)
    queues = {q: {place.name.lower(): spool.depth(q, place) for place in Place} for q in QUEUES}
    from ams.store.outqueue import DeferredQueue
    queues["deferred"] = {"queued": DeferredQueue(
        spool, bucket_seconds=store.config.outbound.bucket_seconds).depth()}
    now = time.time()
    workers = [{"id": w.id, "host": w.host, "pid": w.pid, "queues": list(w.queues),
                "started": w.started, "lease_left": round(w.expires - now, 1)}
               for w in spool.live_workers()]
    return {"store": str(store.root), "host": store.host, "queues": queues, "workers": workers}


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(open_store(args))
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(f"store {report['store']} (this host: {report['host']})")
    for queue, depths in report["queues"].items():
        print(f"queue {queue}: " + ", ".join(f"{k} {v}" for k, v in depths.items()))
    print(f"live workers: {len(report['workers'])}")
    for w in report["workers"]:
        print(f"  {w['id']} on {w['host']} pid {w['pid']} ({', '.join(w['queues'])})")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    spool = Spool(open_store(args))
    if args.queue == "deferred":
        from ams.cli._outbound import cmd_queue_deferred
        return cmd_queue_deferred(args, spool)
    failed = getattr(args, "failed", False)
    place = Place.FAILED if failed else (Place.CLAIMED if getattr(args, "claimed", False)
                                         else Place.QUEUED)
    if args.action == "list":
        now = time.time()
        for e in spool.list_entries(args.queue, place):
            env = e.envelope
            who = f"<{env.mail_from}> -> {', '.join(env.rcpt_to)}" if env else f"({e.error})"
            extra = f" reason: {e.reason}" if e.reason else ""
            extra += f" held by {e.worker}" if e.worker else ""
            print(f"{e.id}\t{e.size}\t{_age(e.age(now))}\tattempts {e.attempts}\t{who}{extra}")
        return 0
    if args.action == "show":
        entry = spool.read(args.queue, args.id, place)
        env = entry.envelope
        print(f"id: {env.id}\nfrom: <{env.mail_from}>\nto: {', '.join(env.rcpt_to)}")
        print(f"received: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(env.received_us / 1e6))}"
              f" on {env.host}\nsize: {len(entry.message)}\n")
        if args.queue == "out":
            from ams.cli._outbound import outbound_lines
            print("recipients:\n" + "\n".join(outbound_lines(env)) + "\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(entry.message)
        return 0
    missing = 0
    for entry_id in args.id:
        done = (spool.retry(args.queue, entry_id) if args.action == "retry"
                else spool.delete(args.queue, entry_id, place))
        if done:
            print(f"{'retried' if args.action == 'retry' else 'deleted'} {entry_id}")
        else:
            print(f"ams: no such {'failed ' if failed or args.action == 'retry' else ''}entry "
                  f"{entry_id} in queue {args.queue}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def cmd_reindex(args: argparse.Namespace) -> int:
    from ams.index import ReindexProgress, reindex_all
    store = open_store(args)
    progress = Progress("reindex", unit="mailboxes")

    def report(p: ReindexProgress) -> None:
        if p.error:
            print(f"{p.path}: {p.error}")
        progress.update(p.done, p.total)

    stats = reindex_all(store, progress=report)
    progress.done(f"{stats.mailboxes} mailboxes, {stats.messages} messages indexed, "
                  f"{len(stats.errors)} failed")
    return 1 if stats.errors else 0
