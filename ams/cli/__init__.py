"""The ``ams`` command: ``main(argv) -> int``.

Every error an operator can cause is one line on stderr and a non-zero exit
(2 for bad usage or configuration, 1 for everything else); a traceback is
shown only for a bug, and only with ``AMS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ams.cli._parser import build_parser
from ams.errors import AMSError, ConfigError, UsageError

Handler = Callable[[argparse.Namespace], int]


#: Command → (module, function): a command imports only what it runs, so
#: ``ams bboard post`` does not load trio, the protocol cores or FUSE.
_HANDLERS = {
    "bboard": ("ams.cli._bboard", "cmd_bboard"), "mount": ("ams.cli._mount", "cmd_mount"),
    "doctor": ("ams.cli._doctor", "cmd_doctor"),
    **{name: ("ams.cli._commands", f"cmd_{name}")
       for name in ("init", "user", "mailbox", "fsck", "status", "reindex", "queue")},
    **{name: ("ams.cli._serve", f"cmd_{name}")
       for name in ("serve", "mx", "imap", "worker", "deliver", "submission", "gateway")},
}


def _handler(command: str) -> Handler:
    module, name = _HANDLERS[command]
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("AMS_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _handler(args.command)(args)
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
