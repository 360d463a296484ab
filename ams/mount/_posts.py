"""Posting by writing a file: the buffer behind a file created in a bboard directory.

Theory of operation
-------------------
A file created in ``bboards/<name>/`` is not a file of the store: it is a
buffer in the mount's memory, bounded by ``limits.max_message_bytes``.  When
the writer closes it (FUSE ``flush``, whose error ``close(2)`` returns), the
bytes are checked as a whole message and posted with ``Bboards.post`` as the
mount's user, under the board's policy as it is *then*.  A refusal is the
error of that ``close``, and nothing is posted (the post is one append or
none [P1]).  Once posted, or when the last descriptor is released, the name
is gone: a published post shows up under its UID, a post held for a
moderator does not show at all.

Errors, as a writer sees them:

- ``EACCES``: the board's policy refuses the user (or the mount has no user
  to post as); nothing posted.
- ``EINVAL``: the bytes are not a message (empty, NUL bytes, no header).
- ``EFBIG``: a write past the size limit.
- ``ENOENT``: the board was deleted meanwhile.
- ``EIO``: the store failed (a lock timed out, a disk error).

This module is pure: :class:`PostBuffer` holds bytes, :func:`submit` calls
the synchronous bboard API.
"""

from __future__ import annotations

import errno
import logging
import time

from ams.errors import AMSError, NotFound, UsageError
from bboard import Bboards, NotPermitted, PostResult, check_raw

log = logging.getLogger(__name__)

#: Files being posted at once through one mount; each may hold up to
#: ``limits.max_message_bytes`` of memory.
MAX_OPEN_POSTS = 32


class FsError(Exception):
    """An operation the view refuses, with the errno the caller should see."""

    def __init__(self, errno_: int, why: str = "") -> None:
        super().__init__(why or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


class PostBuffer:
    """The bytes of one file being written into a board directory."""

    def __init__(self, ino: int, board: str, name: bytes, limit: int, *, uid: int = 0,
                 gid: int = 0) -> None:
        self.ino = ino
        self.board = board
        self.name = name
        self.limit = limit
        #: Who ``stat`` says owns it (the board directory's owner).
        self.uid, self.gid = uid, gid
        self.data = bytearray()
        self.created_ns = time.time_ns()
        #: The result once posted; later closes of the same file do nothing.
        self.result: PostResult | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, offset: int, buf: bytes) -> int:
        end = offset + len(buf)
        if end > self.limit:
            raise FsError(errno.EFBIG, f"a post may be at most {self.limit} bytes")
        if self.result is not None:
            raise FsError(errno.EBADF, "posted already")
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:end] = buf
        return len(buf)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def truncate(self, size: int) -> None:
        if size > self.limit:
            raise FsError(errno.EFBIG, f"a post may be at most {self.limit} bytes")
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


def submit(boards: Bboards, buf: PostBuffer, user: str | None) -> PostResult | None:
    """Post ``buf`` as ``user``; None when there is nothing to post.

    An empty file posts nothing and is no error (``touch`` makes one).
    Every refusal is an :class:`FsError` and leaves nothing posted.
    """
    if buf.result is not None or not buf.data:
        return buf.result
    if user is None:
        raise FsError(errno.EACCES, "this mount has no user to post as (mount with --user)")
    raw = bytes(buf.data)
    try:
        check_raw(raw, buf.limit)
        info = boards.lookup(buf.board)  # the policy as it is now
        result = boards.post(info, raw, user=user)
    except NotPermitted as e:
        log.info("post to %s by %s refused: %s", buf.board, user, e)
        raise FsError(errno.EACCES, str(e)) from None
    except UsageError as e:
        log.info("post to %s by %s refused: %s", buf.board, user, e)
        raise FsError(errno.EINVAL, str(e)) from None
    except NotFound as e:
        raise FsError(errno.ENOENT, str(e)) from None
    except (AMSError, OSError) as e:
        log.warning("post to %s by %s failed: %s", buf.board, user, e)
        raise FsError(errno.EIO, str(e)) from None
    buf.result = result
    if result.published:
        log.info("posted %s to %s as %d", buf.name.decode(errors="replace"), buf.board,
                 result.uid)
    else:
        log.info("%s to %s waits for a moderator (pending %d)",
                 buf.name.decode(errors="replace"), buf.board, result.pending)
    return result


__all__ = ["MAX_OPEN_POSTS", "FsError", "PostBuffer", "submit"]
