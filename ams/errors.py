"""The exceptions AMS raises, in one place.

Three families, kept apart on purpose: the caller reacts differently to each.

- :class:`ConfigError` and :class:`UsageError`: the operator's input is wrong;
  the CLI prints one line and exits 2.
- :class:`StoreError` subclasses: something on the shared store is not as the
  format says.  :class:`CorruptionError` (bytes that fail a checksum or a
  format rule) is distinct from :class:`FormatVersionError` (a newer format
  we refuse to touch) and from plain ``OSError`` (the filesystem failed).
- :class:`LockError` subclasses: coordination failed (timeout, lost lease).
  They are temporary by nature: retry later.
"""

from __future__ import annotations


class AMSError(Exception):
    """Base of every error AMS raises on purpose."""


class ConfigError(AMSError):
    """The configuration is missing, malformed or names an unknown key."""


class UsageError(AMSError):
    """A command was given arguments it cannot act on."""


class NotFound(AMSError):
    """A user, mailbox or other named object does not exist."""


class AlreadyExists(AMSError):
    """A user, mailbox or other named object exists already."""


class StoreError(AMSError):
    """The shared store is not as the on-disk format says."""


class CorruptionError(StoreError):
    """Bytes on disk fail a checksum or a rule of the format.

    ``path`` and ``offset`` say exactly where, for fsck and for the log.
    """

    def __init__(self, message: str, *, path: object = None, offset: int | None = None):
        where = ""
        if path is not None:
            where = f" in {path}" + (f" at offset {offset}" if offset is not None else "")
        super().__init__(message + where)
        self.path = path
        self.offset = offset


class FormatVersionError(StoreError):
    """A file was written by a newer format version than this code reads."""


class LockError(AMSError):
    """A lock could not be taken or was lost; the operation may be retried."""


class LockTimeout(LockError):
    """The lock was held by someone else for longer than we would wait."""


class LockLost(LockError):
    """Our lease ran out or our lock file was broken by another host."""
