"""The ``ams`` command line: one parser, built here so docs can show it."""

from __future__ import annotations

import argparse

from ams import __version__
from ams.cli._bboard import add_bboard_arguments
from ams.cli._doctor import add_doctor_arguments
from ams.cli._mount import add_mount_arguments


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand; SUPPRESS keeps a
    # subcommand's parser from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $AMS_CONFIG, then ./ams.toml)")

    p = argparse.ArgumentParser(
        prog="ams", description="AMS: filesystem-native mail and bulletin boards.")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="config file (default: $AMS_CONFIG, then ./ams.toml)")
    p.add_argument("--version", action="version", version=f"ams {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    c = cmd("init", "create a store and write its config file")
    c.add_argument("--root", required=True, help="store root on the shared filesystem")
    c.add_argument("--domain", action="append", required=True, dest="domains",
                   help="a local mail domain (repeatable)")
    c.add_argument("--host-name", help="this host's name in the pool (default: hostname)")
    c.add_argument("--cache-dir", help="local (never shared) cache dir for indexes")
    c.add_argument("--lock-method", choices=["fcntl", "dotlock"], default="fcntl")
    c.add_argument("--force", action="store_true", help="overwrite an existing config file")

    u = cmd("user", "manage users")
    us = u.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = us.add_parser("add", help="add a user", parents=[common])
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    a = us.add_parser("passwd", help="set a user's password", parents=[common])
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true")
    us.add_parser("list", help="list users", parents=[common])
    a = us.add_parser("del", help="delete a user and their mail", parents=[common])
    a.add_argument("name")
    a.add_argument("--keep-mail", action="store_true",
                   help="move the mail aside instead of removing it")
    a = us.add_parser("alias", help="add or remove an alias address", parents=[common])
    a.add_argument("name")
    a.add_argument("alias")
    a.add_argument("--remove", action="store_true")

    m = cmd("mailbox", "manage a user's mailboxes")
    ms = m.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, args in (("list", []), ("create", ["name"]), ("rename", ["old", "new"]),
                         ("delete", ["name"])):
        a = ms.add_parser(action, help=f"{action} mailboxes", parents=[common])
        a.add_argument("--user", required=True)
        for arg in args:
            a.add_argument(arg)

    f = cmd("fsck", "verify every log record and store invariant")
    f.add_argument("--repair", action="store_true", help="repair what can be repaired safely")
    f.add_argument("--user", help="only this user's mailboxes")

    cmd("reindex", "rebuild this host's local index from every log in the store")

    sv = cmd("serve", "run every role over one store (creates a demo store with --root)")
    sv.add_argument("--root", help="store root; created with a demo user if there is none")
    sv.add_argument("--listen-smtp", metavar="HOST:PORT", help="MX listen address")
    sv.add_argument("--listen-imap", metavar="HOST:PORT", help="IMAP listen address")
    sv.add_argument("--workers", type=int, default=2, help="delivery workers (default 2)")
    sv.add_argument("--listen-submission", metavar="HOST:PORT",
                    help="submission listen address")
    sv.add_argument("--gateways", type=int, default=1, help="outbound gateways (default 1)")

    mx = cmd("mx", "run the inbound MX")
    mx.add_argument("--listen", metavar="HOST:PORT", help="override listen.smtp")

    im = cmd("imap", "run an IMAP bridge")
    im.add_argument("--listen", metavar="HOST:PORT", help="override listen.imap")

    sb = cmd("submission", "run SMTP submission for users (AUTH, after STARTTLS)")
    sb.add_argument("--listen", metavar="HOST:PORT", help="override listen.submission")

    g = cmd("gateway", "run outbound gateways (any number, on any host)")
    g.add_argument("--count", type=int, default=1, help="gateways in this process")

    w = cmd("worker", "run delivery workers (any number, on any host)")
    w.add_argument("--count", type=int, default=1, help="workers in this process")

    d = cmd("deliver", "local delivery agent: file one message from stdin")
    d.add_argument("-r", "--recipient", action="append", default=[], metavar="ADDRESS")
    d.add_argument("-f", "--sender", metavar="SENDER", help="envelope sender")

    q = cmd("queue", "list, show, retry and delete spooled mail")
    qs = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext in (("list", "list entries"), ("show", "show one entry"),
                             ("retry", "move a failed entry back into its queue "
                                       "(deferred: try it now)"),
                             ("delete", "delete a queued or failed entry")):
        a = qs.add_parser(action, help=helptext, parents=[common])
        a.add_argument("--queue", choices=["in", "out", "deferred"], default="in",
                       help="in: to local users; out: to remote hosts; deferred: out, "
                            "waiting for a retry")
        if action == "list":
            a.add_argument("--failed", action="store_true", help="the failed entries")
            a.add_argument("--claimed", action="store_true", help="entries workers hold")
        else:
            a.add_argument("id", nargs="+" if action != "show" else None)
            if action in ("show", "delete"):
                a.add_argument("--failed", action="store_true", help="a failed entry")

    s = cmd("status", "queue depths and live workers")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    add_mount_arguments(cmd("mount", "show mailboxes and bboards as .eml files (FUSE); "
                                     "post by writing into a bboard"))

    add_doctor_arguments(cmd("doctor", "check that the shared filesystem gives what the store "
                                       "relies on (run on two hosts at once)"))
    add_bboard_arguments(cmd("bboard", "bulletin boards: create, post, read, subscribe, "
                                       "moderate, expire"), common)
    return p
