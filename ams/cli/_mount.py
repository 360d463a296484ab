"""``ams mount MOUNTPOINT [--user NAME]``: the mounted view, until unmounted.

Runs in the foreground, like the other roles: SIGTERM or Ctrl-C unmounts and
exits 0, and so does ``fusermount3 -u MOUNTPOINT``.  A crashed mount left at
MOUNTPOINT is cleaned up first (ams.mount._mountpoint).

Who may mount what: root may mount every user's mail (no ``--user``), or
one user's; anyone else only their own, named by ``--user`` and matching
their login name.  The store does not map AMS users to Unix accounts; this
rule keeps a user from mounting someone else's mail through a store they
can read anyway, and says plainly what the view is.
"""

from __future__ import annotations

import argparse
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING

from ams.errors import UsageError

if TYPE_CHECKING:
    import trio

    from ams.config import Config


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mount`` arguments, added to ``parser`` (built in ams.cli._parser)."""
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    parser.add_argument("--user", metavar="NAME",
                        help="show NAME's mail and the bboards NAME may read, and post as "
                             "NAME (default, root only: every user's mail, read-only)")


def cmd_mount(args: argparse.Namespace) -> int:
    import trio

    from ams.config import load_config
    from ams.store import Store, UserRegistry, validate_user_name

    user = args.user
    _check_who(user)
    cfg = load_config(args.config)
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        raise UsageError("the mounted view needs pyfuse3 (pip install 'ams[fuse]')") from None
    store = Store(cfg)
    store.check()
    if user is not None:
        UserRegistry(store).get(validate_user_name(user))  # NotFound: one line
    try:
        trio.run(_run, cfg, Path(args.mountpoint), user)
    except BaseExceptionGroup as group:
        raise _first(group) from None
    return 0


def _first(group: BaseExceptionGroup) -> BaseException:  # type: ignore[type-arg]
    """The one error a nursery wrapped, so ams.cli.main can say it in one line."""
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _check_who(user: str | None) -> None:
    if os.geteuid() == 0:
        return
    if user is None:
        raise UsageError("only root may mount every user's mail; give --user NAME")
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = ""
    if user != me:
        raise UsageError(f"only root may mount another user's mail (you are {me or 'unknown'}, "
                         f"not {user})")


async def _run(cfg: Config, mountpoint: Path, user: str | None) -> None:
    import signal

    import trio

    from ams.mount import serve_mount, stop_mount

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[Path]) -> None:
                await serve_mount(cfg, mountpoint, user=user, task_status=task_status)
                nursery.cancel_scope.cancel()  # unmounted from outside

            where = await nursery.start(serve)
            who = f"for {user}" if user else "for every user"
            print(f"mounted {cfg.store.root} at {where} {who}; Ctrl-C unmounts", flush=True)
            async for _ in signals:
                stop_mount()
                break


__all__ = ["add_mount_arguments", "cmd_mount"]
