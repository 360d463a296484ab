"""The IMAP bridge (``ams imap``): any IMAP client over the shared store.

- :func:`serve_imap`: the trio server (ams.imap._server) over the sans-IO
  core in ams.protocols.imap.
- :class:`Account` / :class:`Selected`: what a session does to the store
  (ams.imap._backend), kept current from the log tails through this host's
  local index.
"""

from ams.imap._backend import Account, Changes, ListEntry, Selected
from ams.imap._server import Bridge, serve_imap

__all__ = ["Account", "Bridge", "Changes", "ListEntry", "Selected", "serve_imap"]
