"""The mounted view's model: directories and ``.eml`` files over the store.

Theory of operation
-------------------
The tree is computed, not stored::

    mail/<user>/<mailbox>/<sub-mailbox>/<uid>.eml
    bboards/<board name>/<uid>.eml

Its shape comes from files the store keeps anyway (each user's
``mailboxes.json``, the bboard registry; for a mount of every user, the user
registry: ams.mount._shape) and its files from this host's local index
(ams.index): a mailbox
or bboard directory lists the UIDs the index holds for its log, each as
``<uid>.eml`` with the message's exact size and its internal date as mtime.
Nothing lists a directory of the store to find messages [brief rule 3]: the
index is brought up to date from the log's tail.  Mailbox names map to
directories at the hierarchy delimiter ``/``; a board is one directory named
by its whole dotted name.

Inode numbers are stable for the life of a mount with no table per message:
a message is ``log number << 32 | UID``, where the log number is handed out
once per log (and again if its UIDVALIDITY changes).  A message's bytes never
change under its UID, so the kernel may keep its pages; only names come and
go.  Directories and files being posted get numbers below 2**32.

Freshness.  A folder (a mailbox's or board's log) is brought up to date when
the kernel asks about it and was last refreshed more than :data:`FRESH`
seconds ago; so are a user's mailbox list and the board registry.  The
kernel also answers from its own cache for :data:`ENTRY_TTL` seconds without
asking, so the driver keeps watching every folder the kernel heard about in
the last :data:`WATCH_FOR` seconds (``ams.imap``'s Watcher: one probe of the
log's size per interval) and refreshes it when its log changes.  Each refresh
compares the UIDs with the previous ones and queues what the kernel must
forget: an expunged name, a directory's changed attributes
(:meth:`MountTree.take_invalidations`).  After WATCH_FOR nothing the kernel
holds can be stale, since its own timeouts have run out, so the watch ends.

Owners and modes.  A mount for one user (``user``) shows that user's mail and
the boards they may read, owned by the mounting uid: mail 0444 in 0555
directories, a board directory 0755 when the user may post to it.  A mount
of everything (``user`` None, root only) shows each user's mail as owned by
the Unix account of the same name when there is one (else root), 0400 in
0500 directories, and boards 0444/0555, or 0400/0500 for boards with a
reader list; it takes no posts.

Everything here is synchronous, thread-safe and free of FUSE: the driver
(ams.mount._fuse) calls it from worker threads and turns :class:`FsError`
into errno replies.  Lock order: a folder's lock, then the tree's.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from ams.errors import AMSError, NotFound
from ams.index import Index, IndexedMessage
from ams.mount._posts import MAX_OPEN_POSTS, FsError, PostBuffer, submit
from ams.mount._shape import (
    DIR_ATTR_TTL,
    ENTRY_TTL,
    FRESH,
    LOW,
    MSG_NAME,
    NEVER,
    WATCH_FOR,
    Dirs,
    Forget,
    Invalidation,
    Lists,
    Owner,
    Path_,
    Touch,
)
from ams.store import MailboxLog, Store, UserRegistry, _fs
from ams.store.format import MAX_UID
from bboard import Bboards, BoardInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attr:
    """What ``stat`` shows, and how long the kernel may keep it."""

    ino: int
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int = 1
    entry_ttl: float = ENTRY_TTL
    attr_ttl: float = ENTRY_TTL

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class Folder:
    """One log shown as a directory: a mailbox, or a board's published posts."""

    def __init__(self, log_no: int, mailbox_log: MailboxLog, log_id: str, uidvalidity: int,
                 mtime_ns: int) -> None:
        self.log_no = log_no
        self.log = mailbox_log
        self.log_id = log_id
        self.uidvalidity = uidvalidity
        #: The UIDs last shown, ascending.
        self.uids: array[int] = array("I")
        self.modseq = -1
        self.refreshed = NEVER
        #: When the kernel was last told about this folder (monotonic).
        self.served = NEVER
        self.dir_ino = 0
        self.mtime_ns = mtime_ns
        self.file_mode = 0o444
        self.owner = Owner(0, 0)
        self.lock = threading.Lock()
        #: The log is gone (the mailbox or board was deleted): nothing to watch.
        self.gone = False

    def ino(self, uid: int) -> int:
        return (self.log_no << 32) | uid


@dataclass
class _Dir:
    mode: int
    owner: Owner
    mtime_ns: int
    subdirs: list[str] = field(default_factory=list)
    folder: Folder | None = None
    board: BoardInfo | None = None


@dataclass
class _MessageHandle:
    fd: int
    base: int
    size: int
    attr: Attr


class MountTree:
    """The view of one store through one mount.  See the module docstring."""

    def __init__(self, store: Store, index: Index, *, user: str | None,
                 owner: Owner | None = None, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.store = store
        self.index = index
        self.user = user
        self.users = UserRegistry(store)
        self.boards = Bboards(store, self.users)
        self.limit = store.config.limits.max_message_bytes
        self._clock = clock
        self._me = owner or Owner(os.getuid(), os.getgid())
        self.started_ns = time.time_ns()
        self._lock = threading.RLock()
        self._post_lock = threading.Lock()
        self.dirs = Dirs()
        self.lists = Lists(self.users, self.boards, self.dirs, user=user, me=self._me,
                           clock=clock)
        self._folders: dict[str, Folder] = {}
        self._by_no: dict[int, Folder] = {}
        self._next_log_no = 1
        self._handles: dict[int, _MessageHandle | PostBuffer] = {}
        self._next_fh = 1
        self._posts: dict[int, PostBuffer] = {}
        self._post_names: dict[tuple[str, bytes], int] = {}
        self._open_attrs: dict[int, tuple[Attr, int]] = {}
        self._activated: list[Folder] = []
        if user is not None:
            self.users.get(user)  # NotFound: say so before mounting

    # -- what the driver asks ----------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        if ino >= LOW:
            return self._message_attr_by_ino(ino)
        with self._lock:
            buf = self._posts.get(ino)
            if buf is not None:
                return self._post_attr(buf)
            path = self.dirs.path_of(ino)
            if path is None:
                raise FsError(errno.ENOENT)
            return self._dir_attr(path, self._describe(path, contents=False))

    def lookup(self, parent: int, name: bytes) -> Attr:
        with self._lock:
            path = self.dirs.path_of(parent)
            if path is None:
                raise FsError(errno.ENOENT)
            if name == b".":
                return self.getattr(parent)
            if name == b"..":
                return self.getattr(self.dirs.ino_of(path[:-1]))
            d = self._describe(path)
            if d.board is not None:
                ino = self._post_names.get((d.board.name, name))
                if ino is not None:
                    return self._post_attr(self._posts[ino])
            sub = _decode(name)
            if sub is not None and sub in d.subdirs:
                child = path + (sub,)
                return self._dir_attr(child, self._describe(child, contents=False))
        m = MSG_NAME.fullmatch(name)
        if d.folder is None or m is None or int(m[1]) > MAX_UID:
            raise FsError(errno.ENOENT)
        self.refresh(d.folder)
        msg = self._indexed(d.folder, int(m[1]))
        if msg is None:
            raise FsError(errno.ENOENT)
        return self._message_attr(d.folder, msg)

    def listdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        """Every entry of directory ``ino`` with its attributes (no . or ..)."""
        with self._lock:
            path = self.dirs.path_of(ino)
            if path is None:
                raise FsError(errno.ENOENT)
            d = self._describe(path)
            out = []
            for sub in d.subdirs:
                child = path + (sub,)
                try:
                    out.append((sub.encode("utf-8"),
                                self._dir_attr(child, self._describe(child, contents=False))))
                except FsError:
                    continue  # gone meanwhile
            posts = {}
            if d.board is not None:
                posts = {n: self._posts[i] for (b, n), i in self._post_names.items()
                         if b == d.board.name}
        if d.folder is not None:
            self.refresh(d.folder)
            with self._lock:
                self._serve(d.folder)
            for msg in self._messages(d.folder):
                name = b"%d.eml" % msg.uid
                if name not in posts:
                    out.append((name, self._message_attr(d.folder, msg, serve=False)))
        out.extend((n, self._post_attr(b)) for n, b in sorted(posts.items()))
        return out

    def open(self, ino: int, *, write: bool) -> int:
        """Open a message for reading; return a handle for :meth:`read`."""
        if ino < LOW:
            # A file being posted is written through the descriptor that
            # created it only; directories are not opened here.
            raise FsError(errno.EACCES, "only new files in a bboard directory can be written")
        if write:
            raise FsError(errno.EACCES, "messages are read-only")
        folder, uid = self._message_of(ino)
        for attempt in (1, 2):
            msg = self._indexed(folder, uid)
            if msg is None and attempt == 1:
                self.refresh(folder, force=True)
                continue
            if msg is None:
                raise FsError(errno.ENOENT)
            loc = msg.location
            try:
                fd = os.open(folder.log.segment_path(loc.generation, loc.seq),
                             os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # Compacted away since the index last looked: look again.
                if attempt == 1:
                    self.refresh(folder, force=True)
                    continue
                raise FsError(errno.ENOENT) from None
            attr = self._message_attr(folder, msg)
            with self._lock:
                fh = self._new_fh()
                self._handles[fh] = _MessageHandle(fd, loc.offset, loc.size, attr)
                held = self._open_attrs.get(ino)
                self._open_attrs[ino] = (attr, (held[1] if held else 0) + 1)
            return fh
        raise FsError(errno.ENOENT)  # pragma: no cover - the loop returns or raises

    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        if isinstance(h, PostBuffer):
            return h.read(offset, size)
        n = max(0, min(size, h.size - offset))
        if n == 0:
            return b""
        data = _fs.pread_exact(h.fd, n, h.base + offset)
        if len(data) != n:
            raise FsError(errno.EIO, "message extends past the end of its segment")
        return data

    def create(self, parent: int, name: bytes) -> tuple[int, Attr]:
        """A new file in a board directory: a post, made on :meth:`flush`."""
        with self._lock:
            path = self.dirs.path_of(parent)
            if path is None:
                raise FsError(errno.ENOENT)
            d = self._describe(path)
            if d.board is None:
                raise FsError(errno.EACCES, "only bboard directories take new files")
            if self.user is None:
                raise FsError(errno.EACCES, "this mount has no user to post as")
            if not Bboards.can_post(d.board, self.user):
                raise FsError(errno.EACCES, f"{self.user} may not post to {d.board.name}")
            key = (d.board.name, name)
            if key in self._post_names or _decode(name) in d.subdirs:
                raise FsError(errno.EEXIST)
            if len(self._posts) >= MAX_OPEN_POSTS:
                raise FsError(errno.EMFILE, "too many posts being written at once")
            buf = PostBuffer(self.dirs.alloc(), d.board.name, name, self.limit,
                             uid=d.owner.uid, gid=d.owner.gid)
            self._posts[buf.ino] = buf
            self._post_names[key] = buf.ino
            fh = self._new_fh()
            self._handles[fh] = buf
            self.dirs.queue(Touch(parent))
            return fh, self._post_attr(buf)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self._handle(fh)
        if not isinstance(h, PostBuffer):
            raise FsError(errno.EBADF)
        with self._lock:
            return h.write(offset, data)

    def setattr(self, ino: int, size: int | None) -> Attr:
        """Only a file being posted changes, and only its size (``ftruncate``);
        its mode and times are accepted and ignored, so ``cp -p`` works."""
        with self._lock:
            buf = self._posts.get(ino)
            if buf is None:
                raise FsError(errno.EACCES, "messages are read-only")
            if size is not None:
                buf.truncate(size)
            return self._post_attr(buf)

    def is_post(self, fh: int) -> bool:
        """Whether ``fh`` is a file being posted (closing anything else posts
        nothing).  No lock: one dict read, and the driver calls it from its
        event loop, which must never wait on the tree's lock."""
        return isinstance(self._handles.get(fh), PostBuffer)

    def flush(self, fh: int) -> None:
        """A close: post the file if it is one being posted (see ams.mount._posts)."""
        h = self._handle(fh)
        if not isinstance(h, PostBuffer):
            return
        with self._post_lock:
            done = h.result is not None
            try:
                result = submit(self.boards, h, self.user)
            except FsError:
                # Refused: the name goes now, not at the (asynchronous)
                # release, so the writer sees at once that nothing is there.
                self._retire_post(h)
                raise
        if done or result is None:
            return
        self._retire_post(h)
        if result.published:
            with self._lock:
                info = self.lists.board_map.get(h.board)
                folder = self._folders.get(info.id) if info is not None else None
            if folder is not None:
                self.refresh(folder, force=True)

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
        if h is None:
            return
        if isinstance(h, PostBuffer):
            if h.result is None and h.data:
                log.info("%s in %s closed without being posted", h.name.decode(errors="replace"),
                         h.board)
            self._retire_post(h)
            with self._lock:
                self._posts.pop(h.ino, None)
            return
        os.close(h.fd)
        with self._lock:
            held = self._open_attrs.get(h.attr.ino)
            if held is not None:
                if held[1] <= 1:
                    del self._open_attrs[h.attr.ino]
                else:
                    self._open_attrs[h.attr.ino] = (held[0], held[1] - 1)

    # -- keeping up ------------------------------------------------------------------

    def refresh(self, folder: Folder, *, force: bool = False) -> None:
        """Bring ``folder`` up to date with its log; queue what the kernel must forget."""
        if not force and self._clock() - folder.refreshed < FRESH:
            return
        with folder.lock:
            now = self._clock()
            if not force and now - folder.refreshed < FRESH:
                return
            try:
                self.index.update(folder.log)
                folder.gone = False
                with self.index.view(folder.log_id) as v:
                    st = v.status()
                    if (st.uidvalidity == folder.uidvalidity and st.highest_modseq ==
                            folder.modseq and st.messages == len(folder.uids)):
                        folder.refreshed = now
                        return
                    uids = array("I", v.uids())
                uidvalidity, modseq = st.uidvalidity, st.highest_modseq
            except (NotFound, FileNotFoundError):
                folder.gone = True
                uidvalidity, modseq, uids = folder.uidvalidity, -1, array("I")
            except (AMSError, OSError) as e:
                log.warning("%s: %s (showing what the index has)", folder.log.path, e)
                folder.refreshed = now
                return
            self._apply(folder, uidvalidity, modseq, uids, now)

    def _apply(self, f: Folder, uidvalidity: int, modseq: int, uids: array[int],
               now: float) -> None:
        with self._lock:
            old, old_no = f.uids, f.log_no
            if uidvalidity != f.uidvalidity:
                gone = list(old)
                del self._by_no[f.log_no]
                f.log_no = self._next_log_no
                self._next_log_no += 1
                self._by_no[f.log_no] = f
                f.uidvalidity = uidvalidity
            elif len(old) <= len(uids) and uids[:len(old)] == old:
                gone = []
            else:
                gone = sorted(set(old) - set(uids))
            self.dirs.queue(*(Forget(f.dir_ino, b"%d.eml" % uid, (old_no << 32) | uid)
                              for uid in gone))
            if gone or len(uids) != len(old):
                f.mtime_ns = time.time_ns()
                self.dirs.queue(Touch(f.dir_ino))
            f.uids, f.modseq, f.refreshed = uids, modseq, now

    def refresh_lists(self) -> None:
        """Re-read the mailbox lists and board registry the kernel heard of lately."""
        with self._lock:
            self.lists.refresh(self._clock())

    def take_invalidations(self) -> list[Invalidation]:
        with self._lock:
            return self.dirs.take()

    def take_activated(self) -> list[Folder]:
        """Folders the kernel heard of after a while without: watch them again."""
        with self._lock:
            out, self._activated = self._activated, []
            return out

    def watch_left(self, folder: Folder) -> float:
        """Seconds until ``folder`` need not be watched any more."""
        return folder.served + WATCH_FOR - self._clock()

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, {}
        for h in handles.values():
            if isinstance(h, _MessageHandle):
                os.close(h.fd)

    # -- directories ------------------------------------------------------------------

    def _describe(self, path: Path_, *, contents: bool = True) -> _Dir:
        """Directory ``path``, or FsError(ENOENT).  Under the tree's lock."""
        n = len(path)
        if n == 0:
            return _Dir(0o555, self._me, self.started_ns, ["bboards", "mail"])
        if path[0] == "mail":
            if n == 1:
                names = self.lists.user_names() if contents else []
                return _Dir(0o555 if self.user else 0o711, self._me, self.started_ns, names)
            if n == 2 and not contents:
                self.lists.check_user(path[1])
                return _Dir(self._mail_dir_mode, self.lists.owner(path[1]), self.started_ns)
            v = self.lists.user_view(path[1])
            md = v.layout.get(path[2:])
            if md is None:
                raise FsError(errno.ENOENT)
            folder = None
            if md.info is not None:
                folder = self._folder(md.info.id, md.info.uidvalidity,
                                      lambda i=md.info: self.store.log_at(i.path, i.id),
                                      path, 0o444 if self.user else 0o400, v.owner)
            return _Dir(self._mail_dir_mode, v.owner,
                        folder.mtime_ns if folder else self.started_ns,
                        sorted(md.children), folder)
        if path[0] == "bboards" and n <= 2:
            boards = self.lists.visible_boards()
            if n == 1:
                return _Dir(0o555, self._me, self.lists.boards_mtime, sorted(boards))
            info = boards.get(path[1])
            if info is None:
                raise FsError(errno.ENOENT)
            private = self.user is None and info.read != "all"
            if self.user is not None:
                mode = 0o755 if Bboards.can_post(info, self.user) else 0o555
            else:
                mode = 0o500 if private else 0o555
            folder = self._folder(info.id, info.uidvalidity,
                                  lambda i=info: self.boards.open(i), path,
                                  0o400 if private else 0o444, self._me)
            return _Dir(mode, self._me, folder.mtime_ns, [], folder, info)
        raise FsError(errno.ENOENT)

    @property
    def _mail_dir_mode(self) -> int:
        return 0o555 if self.user is not None else 0o500

    def _dir_attr(self, path: Path_, d: _Dir) -> Attr:
        # nlink 1: "not counted", which find(1) and fts(3) understand; counting
        # would mean reading every user's mailbox list to list mail/.  A
        # directory's own attributes do not start a watch (they live
        # DIR_ATTR_TTL only); the names and files in it do.
        return Attr(self.dirs.ino_of(path), stat.S_IFDIR | d.mode, 0, d.mtime_ns, d.owner.uid,
                    d.owner.gid, 1, ENTRY_TTL, DIR_ATTR_TTL)

    # -- folders and messages -------------------------------------------------------------

    def _folder(self, log_id: str, uidvalidity: int, make: Callable[[], MailboxLog],
                path: Path_, file_mode: int, owner: Owner) -> Folder:
        f = self._folders.get(log_id)
        if f is None:
            f = Folder(self._next_log_no, make(), log_id, uidvalidity, self.started_ns)
            self._next_log_no += 1
            self._folders[log_id] = self._by_no[f.log_no] = f
        f.dir_ino = self.dirs.ino_of(path)
        f.file_mode, f.owner = file_mode, owner
        return f

    def _serve(self, f: Folder) -> None:
        now = self._clock()
        if now - f.served > WATCH_FOR:
            self._activated.append(f)
        f.served = now

    def _message_of(self, ino: int) -> tuple[Folder, int]:
        with self._lock:
            f = self._by_no.get(ino >> 32)
        if f is None:
            raise FsError(errno.ENOENT)
        return f, ino & 0xFFFF_FFFF

    def _indexed(self, f: Folder, uid: int) -> IndexedMessage | None:
        try:
            return self.index.get(f.log_id, uid)
        except NotFound:
            return None

    def _messages(self, f: Folder) -> list[IndexedMessage]:
        try:
            with self.index.view(f.log_id) as v:
                return v.messages()
        except NotFound:
            return []

    def _message_attr(self, f: Folder, m: IndexedMessage, *, serve: bool = True) -> Attr:
        if serve:
            with self._lock:
                self._serve(f)
        return Attr(f.ino(m.uid), stat.S_IFREG | f.file_mode, m.size,
                    m.internal_date * 1_000_000_000, f.owner.uid, f.owner.gid)

    def _message_attr_by_ino(self, ino: int) -> Attr:
        f, uid = self._message_of(ino)
        msg = self._indexed(f, uid)
        if msg is not None and f.ino(uid) == ino:
            return self._message_attr(f, msg)
        with self._lock:
            held = self._open_attrs.get(ino)  # expunged, but still open
        if held is None:
            raise FsError(errno.ENOENT)
        return held[0]

    # -- posts ---------------------------------------------------------------------------

    def _post_attr(self, buf: PostBuffer) -> Attr:
        return Attr(buf.ino, stat.S_IFREG | 0o644, buf.size, buf.created_ns, buf.uid, buf.gid,
                    1, 0.0, 0.0)

    def _retire_post(self, buf: PostBuffer) -> None:
        """The name of a posted (or abandoned) file goes away at once."""
        with self._lock:
            if self._post_names.get((buf.board, buf.name)) != buf.ino:
                return
            del self._post_names[(buf.board, buf.name)]
            parent = self.dirs.known(("bboards", buf.board))
            if parent is not None:
                self.dirs.queue(Forget(parent, buf.name, buf.ino), Touch(parent))

    def _handle(self, fh: int) -> _MessageHandle | PostBuffer:
        with self._lock:
            h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh


def _decode(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


__all__ = ["Attr", "Folder", "MountTree"]
