"""The shape of the mounted tree: which directories exist, and their inode numbers.

Theory of operation
-------------------
Directories come from small files the store keeps anyway: each user's
``mailboxes.json`` (mailbox names split at ``/``), the bboard registry, and,
for a mount of every user, the user registry.  :class:`Lists` reads them
when asked about and they were last read more than :data:`FRESH` seconds
ago (a ``stat`` says whether a mailbox list changed; the registry revalidates
its own cache the same way).  Only the user registry is a directory walk;
it is done for a mount of every user, when ``mail/`` itself is listed, every
:data:`USERS_TTL` seconds at most.

:class:`Dirs` numbers directories from a counter when they are first shown,
and keeps the number while the path names the same thing.  When a path goes
away or comes to name something else (a mailbox renamed over, a board
deleted and created again), its number is dropped with everything below it
and the kernel is told to forget the name (:class:`Forget`); a directory
whose contents or mode changed gets a :class:`Touch`.  The tree's driver
passes these on to the kernel.

Nothing here locks: it all runs under the tree's lock (ams.mount._tree).
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ams.errors import AMSError, NotFound, UsageError
from ams.mount._posts import FsError
from ams.store import Mailboxes, MailboxInfo, MailboxList, UserRegistry, validate_user_name
from bboard import Bboards, BoardInfo

log = logging.getLogger(__name__)

ROOT_INO = 1
#: Inode numbers from here up are messages (see ams.mount._tree).
LOW = 1 << 32
#: Seconds an answer from the index or a list file is trusted without a new look.
FRESH = 0.2
#: How long the kernel may keep names and file attributes without asking.
ENTRY_TTL = 5.0
#: How long it may keep a directory's attributes (mode, mtime) without asking.
DIR_ATTR_TTL = 1.0
#: A folder or list is watched this long after the kernel last heard of it.
WATCH_FOR = 2 * ENTRY_TTL + 1.0
#: How long a listing of every user (mount of everything) is reused.
USERS_TTL = 5.0
MSG_NAME = re.compile(rb"([1-9][0-9]{0,9})\.eml")
NEVER = float("-inf")

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


@dataclass(frozen=True)
class Forget:
    """The kernel must drop ``name`` in directory ``parent`` (it named ``ino``)."""

    parent: int
    name: bytes
    ino: int


@dataclass(frozen=True)
class Touch:
    """The kernel must re-read the attributes of ``ino``."""

    ino: int


Invalidation = Forget | Touch


class Dirs:
    """Directory paths and their inode numbers; the queue of invalidations."""

    def __init__(self) -> None:
        self._ino: dict[Path_, int] = {(): ROOT_INO}
        self._path: dict[int, Path_] = {ROOT_INO: ()}
        self._next = ROOT_INO + 1
        self._queue: list[Invalidation] = []

    def ino_of(self, path: Path_) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = self._ino[path] = self.alloc()
            self._path[ino] = path
        return ino

    def known(self, path: Path_) -> int | None:
        """The number of ``path`` if it was ever shown (else the kernel has nothing cached)."""
        return self._ino.get(path)

    def path_of(self, ino: int) -> Path_ | None:
        return self._path.get(ino)

    def alloc(self) -> int:
        ino = self._next
        if ino >= LOW:
            raise FsError(errno.ENOSPC, "out of inode numbers; remount")
        self._next += 1
        return ino

    def drop(self, path: Path_) -> None:
        """``path`` is gone or now names something else: forget it and below."""
        ino = self._ino.pop(path, None)
        if ino is None:
            return
        del self._path[ino]
        for p in [p for p in self._ino if p[:len(path)] == path]:
            del self._path[self._ino.pop(p)]
        parent = self._ino.get(path[:-1])
        if parent is not None:
            self._queue += [Forget(parent, path[-1].encode("utf-8"), ino), Touch(parent)]

    def touch(self, path: Path_) -> None:
        ino = self._ino.get(path)
        if ino is not None:
            self._queue.append(Touch(ino))

    def queue(self, *invs: Invalidation) -> None:
        self._queue.extend(invs)

    def take(self) -> list[Invalidation]:
        out, self._queue = self._queue, []
        return out


@dataclass
class MDir:
    """A directory in a user's mailbox tree: a mailbox, a parent, or both."""

    info: MailboxInfo | None
    children: set[str] = field(default_factory=set)


class UserView:
    """One user's mailbox list, as directories."""

    def __init__(self, name: str, owner: Owner, mailboxes: MailboxList) -> None:
        self.name = name
        self.owner = owner
        self.mailboxes = mailboxes
        self.key: tuple[int, ...] | None = None
        self.layout: dict[Path_, MDir] = {(): MDir(None)}
        self.checked = NEVER
        self.served = NEVER


class Lists:
    """What the store's lists say exists, for one mount (``user`` None: everyone)."""

    def __init__(self, users: UserRegistry, boards: Bboards, dirs: Dirs, *, user: str | None,
                 me: Owner, clock: Callable[[], float]) -> None:
        self.users = users
        self.boards = boards
        self.dirs = dirs
        self.user = user
        self.me = me
        self._clock = clock
        self._views: dict[str, UserView] = {}
        self._owners: dict[str, Owner] = {}
        self._all_users: tuple[float, list[str]] = (NEVER, [])
        #: The boards shown, by name.
        self.board_map: dict[str, BoardInfo] = {}
        self.boards_mtime = time.time_ns()
        self._boards_checked = NEVER
        self._boards_served = NEVER

    def refresh(self, now: float) -> None:
        """Re-read the lists the kernel heard of in the last WATCH_FOR seconds."""
        for v in list(self._views.values()):
            if now - v.served <= WATCH_FOR:
                self._reload_user(v, now)
        if now - self._boards_served <= WATCH_FOR:
            self._reload_boards(now)

    # -- users ----------------------------------------------------------------------------

    def check_user(self, name: str) -> None:
        """FsError(ENOENT) unless ``mail/<name>`` is shown."""
        if self.user is not None:
            if name != self.user:
                raise FsError(errno.ENOENT)
            return
        if name in self._views or name in self._all_users[1]:
            return
        try:
            validate_user_name(name)
        except UsageError:
            raise FsError(errno.ENOENT) from None
        if not self.users.exists(name):
            raise FsError(errno.ENOENT)

    def user_names(self) -> list[str]:
        if self.user is not None:
            return [self.user]
        at, names = self._all_users
        now = self._clock()
        if now - at >= USERS_TTL:
            names = self.users.list_users()
            self._all_users = (now, names)
        return names

    def owner(self, name: str) -> Owner:
        """Who owns ``mail/<name>``: the mounting user, or the Unix account ``name``."""
        if self.user is not None:
            return self.me
        got = self._owners.get(name)
        if got is None:
            try:
                pw = pwd.getpwnam(name)
                got = Owner(pw.pw_uid, pw.pw_gid)
            except KeyError:
                got = Owner(0, 0)
            self._owners[name] = got
        return got

    def user_view(self, name: str) -> UserView:
        v = self._views.get(name)
        now = self._clock()
        if v is None:
            self.check_user(name)
            try:
                mailboxes = self.users.mailboxes(name)
            except NotFound:
                raise FsError(errno.ENOENT) from None
            v = self._views[name] = UserView(name, self.owner(name), mailboxes)
        v.served = now
        if now - v.checked >= FRESH:
            self._reload_user(v, now)
        return v

    def _reload_user(self, v: UserView, now: float) -> None:
        v.checked = now
        try:
            st = os.stat(v.mailboxes.file)
            key: tuple[int, ...] | None = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            key = None
        if key == v.key and v.key is not None:
            return
        try:
            snap: Mailboxes | None = v.mailboxes.read()
        except NotFound:
            snap = None  # the user was deleted
        except (AMSError, OSError) as e:
            log.warning("mailbox list of %s: %s", v.name, e)
            return
        new = layout(snap)
        base = ("mail", v.name)
        for p in sorted(v.layout, key=len):
            old, cur = v.layout[p], new.get(p)
            if cur is None or _id_of(cur) != _id_of(old):
                self.dirs.drop(base + p)
            elif cur.children != old.children:
                self.dirs.touch(base + p)
        v.layout, v.key = new, key

    # -- boards ---------------------------------------------------------------------------

    def visible_boards(self) -> dict[str, BoardInfo]:
        """The boards shown (for a user: those they may read), by name."""
        now = self._clock()
        self._boards_served = now
        if now - self._boards_checked >= FRESH:
            self._reload_boards(now)
        return self.board_map

    def _reload_boards(self, now: float) -> None:
        self._boards_checked = now
        try:
            infos = self.boards.list()
        except (AMSError, OSError) as e:
            log.warning("bboard registry: %s", e)
            return
        new = {i.name: i for i in infos if self.user is None or Bboards.can_read(i, self.user)}
        old = self.board_map
        for name, was in old.items():
            cur = new.get(name)
            if cur is None or cur.id != was.id:
                self.dirs.drop(("bboards", name))
            elif cur != was:
                self.dirs.touch(("bboards", name))  # its mode may have changed
        if new.keys() != old.keys():
            self.boards_mtime = time.time_ns()
            self.dirs.queue(Touch(self.dirs.ino_of(("bboards",))))
        self.board_map = new


def layout(snap: Mailboxes | None) -> dict[Path_, MDir]:
    """Directories of a user's mailbox tree, from their mailbox list."""
    out: dict[Path_, MDir] = {(): MDir(None)}
    if snap is None:
        return out
    for info in snap.list():
        parts = tuple(info.name.split("/"))
        if not all(_showable(p) for p in parts):
            log.warning("mailbox %r cannot be shown as a directory (a level looks like a "
                        "message file name or is too long)", info.name)
            continue
        for i in range(len(parts)):
            out[parts[:i]].children.add(parts[i])
            out.setdefault(parts[:i + 1], MDir(None))
        out[parts].info = info
    return out


def _showable(part: str) -> bool:
    b = part.encode("utf-8")
    return len(b) <= 255 and MSG_NAME.fullmatch(b) is None


def _id_of(d: MDir) -> str | None:
    return d.info.id if d.info is not None else None


__all__ = ["DIR_ATTR_TTL", "ENTRY_TTL", "FRESH", "LOW", "MSG_NAME", "NEVER", "ROOT_INO",
           "USERS_TTL", "WATCH_FOR", "Dirs", "Forget", "Invalidation", "Lists", "MDir", "Owner",
           "Touch", "UserView", "layout"]
