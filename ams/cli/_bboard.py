"""``ams bboard …``: create, post, read, subscribe, moderate and expire bboards.

The acting user is ``--as USER``, by default ``$USER`` when that is a
registered AMS user.  Administrative actions (create, set, delete, expire)
act on the store directly, like ``ams user``.  Every refusal (unknown board
or user, a policy that says no, a malformed name or message) is one line on
stderr and a non-zero exit (ams.cli.main), and nothing is written.

``read`` shows posts and then marks them ``\\Seen`` for the user, so the read
pointer moves only over what was printed; ``read --new`` shows the posts the
user has not seen.  ``list --subscribed`` gives the unread count of every
subscribed board: the "what's new" of AMS.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ams.errors import AMSError, NotFound, UsageError

if TYPE_CHECKING:
    from bboard import Bboards, BoardInfo
    from bboard._boards import Post

ACTIONS = ("create", "set", "list", "info", "post", "read", "subscribe", "unsubscribe",
           "pending", "approve", "reject", "expire", "delete")


def add_bboard_arguments(parser: argparse.ArgumentParser,
                         common: argparse.ArgumentParser) -> None:
    """The ``bboard`` subcommands, added to ``parser`` (built in ams.cli._parser)."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str, *, board: bool = True,
               as_user: bool = False) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help, description=help, parents=[common])
        if board:
            a.add_argument("name", metavar="NAME", help="bboard name, e.g. andrew.general")
        if as_user:
            a.add_argument("--as", dest="as_user", metavar="USER",
                           help="act as this user (default: $USER if registered)")
        return a

    a = action("create", "create a bboard")
    a.add_argument("--description", default="", help="one line saying what it is for")
    a.add_argument("--post", choices=["open", "members", "moderated"], default="open",
                   help="who may post (default: open)")
    a.add_argument("--read", choices=["all", "list"], default="all",
                   help="who may read: every user, or the readers and moderators")
    a.add_argument("--member", action="append", default=[], metavar="USER")
    a.add_argument("--reader", action="append", default=[], metavar="USER")
    a.add_argument("--moderator", action="append", default=[], metavar="USER")
    a.add_argument("--expire-days", type=int, default=0, metavar="N",
                   help="remove posts older than N days (0: never, the default)")

    a = action("set", "change a bboard's description, policies, lists or expiry")
    a.add_argument("--description")
    a.add_argument("--post", choices=["open", "members", "moderated"])
    a.add_argument("--read", choices=["all", "list"])
    for what in ("member", "reader", "moderator"):
        a.add_argument(f"--add-{what}", action="append", default=[], metavar="USER")
        a.add_argument(f"--remove-{what}", action="append", default=[], metavar="USER")
    a.add_argument("--expire-days", type=int, metavar="N")

    a = action("list", "list bboards (--subscribed: with unread counts)", board=False,
               as_user=True)
    a.add_argument("--subscribed", action="store_true",
                   help="only the user's subscriptions, with unread counts")

    action("info", "show a bboard's settings and counts")

    a = action("post", "post to a bboard; prints the new post's UID", as_user=True)
    a.add_argument("--subject", help="the subject (default for a reply: Re: …)")
    a.add_argument("--file", metavar="FILE", help="read the body from FILE, not stdin")
    a.add_argument("--raw", action="store_true",
                   help="the input is a complete RFC 5322 message, posted as it is")
    a.add_argument("--reply-to", type=int, metavar="UID", help="answer post UID (threading)")

    a = action("read", "show posts and mark them seen", as_user=True)
    a.add_argument("--new", action="store_true", help="only posts not seen yet")
    a.add_argument("--uid", type=int, help="only this post")
    a.add_argument("--limit", type=int, metavar="N", help="at most N posts (the oldest)")
    a.add_argument("--no-mark", action="store_true", help="do not mark the posts seen")

    action("subscribe", "subscribe to a bboard", as_user=True)
    action("unsubscribe", "unsubscribe from a bboard", as_user=True)
    action("pending", "list posts waiting for a moderator", as_user=True)
    for name, help in (("approve", "publish pending posts (moderators)"),
                       ("reject", "drop pending posts (moderators)")):
        a = action(name, help, as_user=True)
        a.add_argument("ids", nargs="+", type=int, metavar="ID", help="pending post id")

    a = action("expire", "remove expired posts (every board, or the ones named)", board=False)
    a.add_argument("names", nargs="*", metavar="NAME")
    a.add_argument("--no-compact", action="store_true",
                   help="expunge only; leave the space to a later compaction")

    action("delete", "delete a bboard and all its posts")


# -- handlers ------------------------------------------------------------------------------


def cmd_bboard(args: argparse.Namespace) -> int:
    # Not ams.cli._commands.open_store: that module pulls in the servers,
    # and a post is one short process (tests start 50 at once).
    from ams.config import load_config
    from ams.store import Store
    from bboard import Bboards

    store = Store(load_config(args.config))
    store.check()
    boards = Bboards(store)
    handler = globals()[f"_{args.action}"]
    return int(handler(boards, args))


def _acting_user(boards: Bboards, args: argparse.Namespace, *, required: bool = True,
                 ) -> str | None:
    """``--as``, else ``$USER`` if that is a registered user."""
    name = getattr(args, "as_user", None)
    if name:
        boards.users.get(name)  # NotFound: one clear line
        return str(name)
    env = os.environ.get("USER", "")
    if env and boards.users.exists(env):
        return env
    if required:
        raise UsageError("say which user you are acting as with --as USER "
                         f"($USER {env!r} is not a registered AMS user)")
    return None


def _create(boards: Bboards, args: argparse.Namespace) -> int:
    info = boards.create(args.name, description=args.description, post=args.post,
                         read=args.read, members=args.member, readers=args.reader,
                         moderators=args.moderator, expire_days=args.expire_days)
    print(f"created bboard {info.name} (post: {info.post}, read: {info.read}"
          f"{_expiry(info)})")
    return 0


def _set(boards: Bboards, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {"description": args.description, "post": args.post,
                               "read": args.read, "expire_days": args.expire_days}
    for what in ("member", "reader", "moderator"):
        for verb in ("add", "remove"):
            names = getattr(args, f"{verb}_{what}")
            if names:
                changes[f"{verb}_{what}s"] = names
    if all(v is None for v in changes.values()):
        raise UsageError("nothing to change: give --description, --post, --read, "
                         "--add-/--remove-member|reader|moderator or --expire-days")
    info = boards.update(args.name, **changes)
    print(f"updated bboard {info.name}")
    return 0


def _info(boards: Bboards, args: argparse.Namespace) -> int:
    info = boards.lookup(args.name)
    posts = boards.posts(info)
    pending = boards.pending(info)
    rows = [("name", info.name), ("description", info.description),
            ("post", info.post), ("read", info.read),
            ("members", " ".join(sorted(info.members)) or "-"),
            ("readers", " ".join(sorted(info.readers)) or "-"),
            ("moderators", " ".join(sorted(info.moderators)) or "-"),
            ("expire days", str(info.expire_days or "never")),
            ("posts", str(len(posts))), ("pending", str(len(pending))),
            ("address", _address(boards, info)), ("id", info.id),
            ("created", info.created)]
    for k, v in rows:
        print(f"{k + ':':13} {v}")
    return 0


def _list(boards: Bboards, args: argparse.Namespace) -> int:
    user = _acting_user(boards, args, required=args.subscribed)
    if not args.subscribed:
        for info in boards.list():
            if user is None or boards.can_read(info, user):
                print(f"{info.name}\t{info.post}\t{info.read}\t{info.description}")
        return 0
    assert user is not None
    state = boards.user_state(user)
    index = _open_index(boards)
    try:
        for name in state.subscriptions():
            try:
                info = boards.lookup(name)
            except NotFound:
                print(f"{name}\t(no such bboard)")
                continue
            if not boards.can_read(info, user):
                print(f"{name}\t(not readable by {user})")
                continue
            uids = [p.uid for p in boards.posts(info, index=index)]
            seen = state.seen(info.id)
            unread = len(uids) - seen.count_in(uids)
            print(f"{name}\t{unread} unread\t{len(uids)} posts")
    finally:
        if index is not None:
            index.close()
    return 0


def _post(boards: Bboards, args: argparse.Namespace) -> int:
    from bboard import build_post, check_raw, parent_of, reply_subject

    user = _acting_user(boards, args)
    info = boards.lookup(args.name)
    boards.route(info, user)  # a refusal before reading any input
    data = _input(args.file)
    limit = boards.store.config.limits.max_message_bytes
    if args.raw:
        if args.subject or args.reply_to:
            raise UsageError("--raw posts the message as it is: no --subject or --reply-to")
        message = check_raw(data, limit)
    else:
        parent = None
        if args.reply_to is not None:
            boards.check_read(info, user)
            parent = parent_of(boards.message(info, args.reply_to))
        subject = args.subject if args.subject is not None else (
            reply_subject(parent.subject) if parent is not None else None)
        if subject is None:
            raise UsageError("give the post a --subject")
        try:
            body = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the body is not UTF-8 text (post it with --raw as a "
                             "MIME message)") from None
        domain = _domain(boards)
        message = build_post(author=f"{user}@{domain}", board_address=_address(boards, info),
                             subject=subject, body=body, domain=domain, parent=parent)
        if len(message) > limit:
            raise UsageError(f"the post is {len(message)} bytes; the limit is {limit}")
    result = boards.post(info, message, user=user)
    if result.uid is not None:
        print(result.uid)
    else:
        print(f"pending {result.pending}")
        print(f"ams: bboard {info.name} is moderated: post {result.pending} waits for a "
              "moderator", file=sys.stderr)
    return 0


def _read(boards: Bboards, args: argparse.Namespace) -> int:
    from ams.store import FlagOp
    from bboard import render_post

    user = _acting_user(boards, args)
    assert user is not None
    info = boards.lookup(args.name)
    boards.check_read(info, user)
    state = boards.user_state(user)
    index = _open_index(boards)
    try:
        posts: list[Post] = boards.posts(info, index=index)
    finally:
        if index is not None:
            index.close()
    if args.uid is not None:
        posts = [p for p in posts if p.uid == args.uid]
        if not posts:
            raise NotFound(f"bboard {info.name!r} has no post {args.uid}")
    if args.new:
        seen = state.seen(info.id)
        posts = [p for p in posts if p.uid not in seen]
    if args.limit is not None:
        posts = posts[:max(args.limit, 0)]
    if not posts:
        print(f"no {'new ' if args.new else ''}posts on {info.name}")
        return 0
    out = sys.stdout
    for p in posts:
        try:
            message = boards.read(info, p)
        except NotFound:  # expired and compacted away since the list was made
            continue
        out.write(render_post(message, heading=f"--- {info.name} #{p.uid} ---"))
        out.write("\n")
    out.flush()
    if not args.no_mark:  # only after everything was shown
        state.store(info.id, FlagOp.ADD, ["\\Seen"], [p.uid for p in posts])
    return 0


def _subscribe(boards: Bboards, args: argparse.Namespace, on: bool = True) -> int:
    user = _acting_user(boards, args)
    assert user is not None
    info = boards.lookup(args.name)
    if on:
        boards.check_read(info, user)
    changed = boards.user_state(user).subscribe(info.name, on)
    verb = "subscribed to" if on else "unsubscribed from"
    print(f"{user} {verb} {info.name}" + ("" if changed else " (already)"))
    return 0


def _unsubscribe(boards: Bboards, args: argparse.Namespace) -> int:
    try:
        return _subscribe(boards, args, on=False)
    except NotFound:
        # A board deleted since: the subscription can still be dropped.
        user = _acting_user(boards, args)
        assert user is not None
        if not boards.user_state(user).subscribe(args.name, False):
            raise
        print(f"{user} unsubscribed from {args.name}")
        return 0


def _pending(boards: Bboards, args: argparse.Namespace) -> int:
    import time

    user = _acting_user(boards, args)
    info = boards.lookup(args.name)
    boards.check_moderator(info, user)
    items = boards.pending(info)
    if not items:
        print(f"nothing waits on {info.name}")
    for p in items:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.time_us / 1e6))
        print(f"{p.uid}\t{when}\t{p.sender or '-'}\t{p.subject}")
    return 0


def _approve(boards: Bboards, args: argparse.Namespace) -> int:
    user = _acting_user(boards, args)
    assert user is not None
    info = boards.lookup(args.name)
    for pid in args.ids:
        r = boards.approve(info, pid, moderator=user)
        print(f"approved {pid}: post {r.uid}")
    return 0


def _reject(boards: Bboards, args: argparse.Namespace) -> int:
    user = _acting_user(boards, args)
    assert user is not None
    info = boards.lookup(args.name)
    for pid in args.ids:
        boards.reject(info, pid, moderator=user)
        print(f"rejected {pid}")
    return 0


def _expire(boards: Bboards, args: argparse.Namespace) -> int:
    from ams.cli._progress import Progress

    infos = [boards.lookup(n) for n in args.names] if args.names else boards.list()
    progress = Progress("expire", len(infos), unit="bboards")
    expired = failed = 0
    for n, info in enumerate(infos, 1):
        try:
            r = boards.expire(info, compact=not args.no_compact)
        except (AMSError, OSError) as e:
            print(f"{info.name}: expiry failed: {e}")
            failed += 1
            continue
        if r.expired or r.pending_expired:
            print(f"{info.name}: expired {r.expired} posts"
                  + (f" and {r.pending_expired} pending" if r.pending_expired else "")
                  + (", compacted" if r.compacted else ""))
        expired += r.expired + r.pending_expired
        progress.update(n)
    progress.done(f"{len(infos)} bboards, {expired} posts expired, {failed} failed")
    return 1 if failed else 0


def _delete(boards: Bboards, args: argparse.Namespace) -> int:
    info = boards.delete(args.name)
    print(f"deleted bboard {info.name}")
    return 0


# -- helpers -------------------------------------------------------------------------------


def _input(path: str | None) -> bytes:
    if path is None:
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def _domain(boards: Bboards) -> str:
    domains = boards.store.config.mail.domains
    return domains[0] if domains else boards.store.host


def _address(boards: Bboards, info: BoardInfo) -> str:
    return f"{boards.store.config.mail.bboard_prefix}{info.name}@{_domain(boards)}"


def _expiry(info: BoardInfo) -> str:
    return f", expire after {info.expire_days} days" if info.expire_days else ""


def _open_index(boards: Bboards) -> Any:
    """This host's local index, if it can be opened here; else None (logs are folded)."""
    try:
        from ams.index import Index
        return Index(boards.store.config)
    except (AMSError, OSError, RuntimeError):
        return None


__all__ = ["ACTIONS", "add_bboard_arguments", "cmd_bboard"]
