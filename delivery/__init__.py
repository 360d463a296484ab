"""Delivery: the worker pool (``ams worker``) and the local delivery agent (``ams deliver``).

- :func:`serve_workers` / :func:`worker_main`: claim spooled mail and file it
  into mailbox logs, exactly once per recipient (``delivery._worker``,
  ``delivery._batch``).
- :func:`deliver_main` / :func:`deliver_command`: file one message from
  stdin with sysexits codes (``delivery._lda``).
- :class:`Resolver`: what a recipient address means, shared with the MX,
  which calls :meth:`Resolver.resolve_for_rcpt` at RCPT time
  (``delivery._resolve``).
"""

from delivery._batch import Deliverer, Job
from delivery._filing import Filer, Filing, Plan, plan_message
from delivery._lda import LDA_DEDUPE_SECONDS, check_message, deliver_command, deliver_main
from delivery._resolve import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    REFUSALS,
    Address,
    Forward,
    Mailbox,
    Reason,
    Refusal,
    ReplySpec,
    Resolution,
    Resolver,
    Target,
    parse_address,
)
from delivery._worker import (
    PoolOptions,
    WorkerPool,
    default_logging,
    serve_workers,
    worker_main,
)

__all__ = [
    "EX_CONFIG", "EX_DATAERR", "EX_NOUSER", "EX_OK", "EX_TEMPFAIL", "EX_UNAVAILABLE",
    "LDA_DEDUPE_SECONDS", "REFUSALS",
    "Address", "Deliverer", "Filer", "Filing", "Forward", "Job", "Mailbox", "Plan",
    "PoolOptions", "Reason", "Refusal", "ReplySpec", "Resolution", "Resolver", "Target",
    "WorkerPool", "check_message", "default_logging", "deliver_command", "deliver_main",
    "parse_address", "plan_message", "serve_workers", "worker_main",
]
