"""The mounted view (``ams mount``): mailboxes and bboards as ``.eml`` files.

::

    MOUNTPOINT/mail/<user>/<mailbox>/<sub-mailbox>/<uid>.eml
    MOUNTPOINT/bboards/<board name>/<uid>.eml

- :class:`MountTree` (ams.mount._tree): the model, with no FUSE in it:
  files from the local index, inode numbers, what the kernel must forget
  when logs change; directories from the mailbox lists and board registry
  (ams.mount._shape).
- :func:`serve_mount` (ams.mount._fuse): the pyfuse3 driver under trio;
  :func:`stop_mount` ends it cleanly.  Imported lazily, so the model (and
  the command line) load without pyfuse3.
- Posting by writing a file into a board directory: ams.mount._posts.
- :func:`prepare_mountpoint`: checks, and the clean-up of a crashed mount.
"""

from ams.mount._mountpoint import is_dead_mount, lazy_unmount, prepare_mountpoint
from ams.mount._posts import MAX_OPEN_POSTS, FsError, PostBuffer
from ams.mount._shape import (
    DIR_ATTR_TTL,
    ENTRY_TTL,
    FRESH,
    ROOT_INO,
    WATCH_FOR,
    Forget,
    Owner,
    Touch,
)
from ams.mount._tree import Attr, Folder, MountTree

__all__ = [
    "DIR_ATTR_TTL", "ENTRY_TTL", "FRESH", "MAX_OPEN_POSTS", "ROOT_INO", "WATCH_FOR",
    "Attr", "Folder", "Forget", "FsError", "MountTree", "Owner", "PostBuffer", "Touch",
    "is_dead_mount", "lazy_unmount", "prepare_mountpoint", "serve_mount", "stop_mount",
]


def __getattr__(name: str) -> object:
    if name in ("serve_mount", "stop_mount"):
        from ams.mount import _fuse
        return getattr(_fuse, name)
    raise AttributeError(f"module 'ams.mount' has no attribute {name!r}")
