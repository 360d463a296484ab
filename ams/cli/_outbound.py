"""``ams queue --queue deferred``, and the outbound state of an entry for ``show``."""

from __future__ import annotations

import argparse
import sys
import time

from ams.errors import UsageError
from ams.store.outqueue import DeferredQueue, OutboundState
from ams.store.spool import Spool
from ams.store.spool_entry import Envelope


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def outbound_lines(env: Envelope) -> list[str]:
    """Per-recipient state of an outgoing entry, one line each."""
    state = OutboundState.of(env)
    lines = []
    for rcpt in dict.fromkeys(env.rcpt_to):
        res = state.results.get(rcpt)
        if res is not None:
            lines.append(f"  <{rcpt}>: {res.status} ({res.code}) {res.reply}"
                         + (f" [{res.remote}]" if res.remote else ""))
            continue
        last = state.last.get(rcpt)
        lines.append(f"  <{rcpt}>: pending" + (f", last: ({last.code}) {last.reply}"
                                                if last else ""))
    return lines


def cmd_queue_deferred(args: argparse.Namespace, spool: Spool) -> int:
    """list / show / retry (now) / delete on the deferred queue."""
    bucket = spool.store.config.outbound.bucket_seconds
    deferred = DeferredQueue(spool, bucket_seconds=bucket)
    if getattr(args, "failed", False) or getattr(args, "claimed", False):
        raise UsageError("the deferred queue has no failed or claimed entries: "
                         "see --queue out")
    if args.action == "list":
        now = time.time()
        for d in deferred.list_entries():
            e, env = d.info, d.info.envelope
            who = f"<{env.mail_from}> -> {', '.join(env.rcpt_to)}" if env else f"({e.error})"
            state = OutboundState.of(env) if env else None
            pending = len(state.pending(env)) if state and env else 0
            tries = state.tries if state else 0
            print(f"{e.id}\t{e.size}\tdue {_when(d.due)}\ttries {tries}\t"
                  f"pending {pending}\t{who}" + ("" if d.due > now else " (due now)"))
        return 0
    if args.action == "show":
        entry, due = deferred.read(args.id)
        env = entry.envelope
        print(f"id: {env.id}\nfrom: <{env.mail_from}>\nto: {', '.join(env.rcpt_to)}")
        print(f"received: {_when(env.received_us / 1e6)} on {env.host}\ndue: {_when(due)}\n"
              f"tries: {OutboundState.of(env).tries}\nsize: {len(entry.message)}")
        print("recipients:\n" + "\n".join(outbound_lines(env)) + "\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(entry.message)
        return 0
    missing = 0
    for entry_id in args.id:
        done = (deferred.retry_now(entry_id) if args.action == "retry"
                else deferred.delete(entry_id))
        if done:
            print(f"{'moved to out for a retry now:' if args.action == 'retry' else 'deleted'} "
                  f"{entry_id}")
        else:
            print(f"ams: no such entry {entry_id} in queue deferred", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


__all__ = ["cmd_queue_deferred", "outbound_lines"]
