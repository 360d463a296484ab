"""``ams imap`` with the IDLE poll interval of the churn benchmark.

Run as ``python -m benchmarks.churn.ams_imap --poll SECONDS AMS-ARGS…``: sets
the bridge's IDLE probe interval (``ams.imap._server.IDLE_POLL``, 0.2 s in
the product, not a setting) and runs the ``ams`` command with the other
arguments.  Every reader in the churn benchmark checks its mailboxes at the
same interval, Dovecot's smallest ``mailbox_idle_check_interval`` (1 s) by
default, so the scenarios differ in what a check costs, not in how often
one is made.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--poll":
        print("usage: python -m benchmarks.churn.ams_imap --poll SECONDS AMS-ARGS...",
              file=sys.stderr)
        return 2
    import ams.imap._server as server
    from ams.cli import main as ams_main

    server.IDLE_POLL = float(args[1])
    return ams_main(args[2:])


if __name__ == "__main__":
    sys.exit(main())
