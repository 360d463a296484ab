"""The ``ams`` command: ``main(argv) -> int``.

Every error an operator can cause is one line on stderr and a non-zero exit
(2 for bad usage or configuration, 1 for everything else); a traceback is
shown only for a bug, and only with ``AMS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ams.cli._parser import build_parser
from ams.errors import AMSError, ConfigError, UsageError

Handler = Callable[[argparse.Namespace], int]


def _handlers() -> dict[str, Handler]:
    from ams.cli import _commands as c
    from ams.cli import _serve as s
    from ams.cli._bboard import cmd_bboard
    from ams.cli._doctor import cmd_doctor
    from ams.cli._mount import cmd_mount
    table: dict[str, Handler] = {
        "bboard": cmd_bboard, "mount": cmd_mount, "doctor": cmd_doctor,
        "init": c.cmd_init, "user": c.cmd_user, "mailbox": c.cmd_mailbox, "fsck": c.cmd_fsck,
        "status": c.cmd_status, "reindex": c.cmd_reindex, "queue": c.cmd_queue,
        "serve": s.cmd_serve,
        "mx": s.cmd_mx, "imap": s.cmd_imap, "worker": s.cmd_worker, "deliver": s.cmd_deliver,
        "submission": s.cmd_submission, "gateway": s.cmd_gateway,
    }
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("AMS_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _handlers()[args.command](args)
    except (ConfigError, UsageError) as e:
        print(f"ams: {e}", file=sys.stderr)
        return 2
    except AMSError as e:
        print(f"ams: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ams: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if os.environ.get("AMS_DEBUG"):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"ams: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so in one line unless debugging
        if os.environ.get("AMS_DEBUG"):
            raise
        print(f"ams: internal error: {type(e).__name__}: {e} (AMS_DEBUG=1 for details)",
              file=sys.stderr)
        return 70


def run() -> None:
    sys.exit(main())
