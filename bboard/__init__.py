"""Bulletin boards: shared logs that many users read, posted to by mail,
from the command line (``ams bboard``) and through IMAP.

A bboard is stored exactly like a mailbox (an append log, ams.store.log) in
its own sharded tree, ``bboards/ab/cd/BOARDID/``.  Its commands and filing
rules are not built yet; until they are, mail to a bboard posting address is
refused with ``550 5.3.3`` (delivery._resolve).
"""
