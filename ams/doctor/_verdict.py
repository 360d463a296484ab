"""From raw measurements to checks, and from checks to a verdict.

Pure functions: no I/O, no clocks.  Every host of a run feeds them the same
raw results (its own and those the others published), so every host prints
the same report; and the tests feed them records from faulty filesystems.

How the verdict is made
-----------------------
A failed check names the lock methods it makes unsafe (``rules_out``):

* both methods: fsync failing, a rename or O_EXCL race with two winners or
  views that disagree, an append not seen at once by a host that re-opens
  the file (a log writer would write over it), a new file or a renamed-over
  file never seen, clocks further apart than a minute;
* ``fcntl``: a lock that another process or host also gets, locks not
  supported, a lock-protected counter that loses increments, a damaged log;
* ``dotlock``: the same counter and log under dotlocks, and a same-size
  overwrite seen late (a lease renewal another host would miss).

The recommendation is ``fcntl`` if nothing ruled it out, else ``dotlock``,
else the filesystem is unsafe.  Warnings (a slow listing, EPERM for the
loser of a race, O_APPEND interleaving, a coarse mtime) never change the
verdict; they say what to expect.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ams.doctor._model import (
    BOTH,
    CROSS_HOST_CHECKS,
    DOTLOCK,
    FCNTL,
    SINGLE_HOST_CHECKS,
    Check,
    Verdict,
    skipped,
)

LOCK_REFUSED = ("EAGAIN", "EACCES", "EWOULDBLOCK")
#: Clocks further apart than this are not a setting to tune but a fault.
MAX_SKEW = 60.0

#: What a late / never-seen observation of each kind rules out, and whether
#: a late one is only a warning.
VIS_POLICY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (ruled out when late, ruled out when never seen)
    "new_file": ((), BOTH),
    "new_name_listed": ((), ()),
    "append_reopen": (BOTH, BOTH),
    "append_fstat": (BOTH, BOTH),
    "overwrite": ((DOTLOCK,), (DOTLOCK,)),
    "rename_over": ((), BOTH),
    "unlink": ((), ()),
}

VIS_CONSEQUENCE = {
    "new_file": "a host may not find a file another host just created",
    "new_name_listed": "new spool entries wait that long before a worker lists them",
    "append_reopen": "a log writer could write over another host's record",
    "append_fstat": "a log writer could find a stale tail and write over a record",
    "overwrite": "a dotlock lease renewal could go unseen and the lock be broken",
    "rename_over": "a host may read a replaced file's old contents",
    "unlink": "a host may still open a file another host removed",
}


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1), "max_ms": round(max(values), 1)}


def _names(hosts: Sequence[str], idxs: Sequence[int]) -> str:
    return ", ".join(hosts[i] for i in idxs)


# -- single-host checks ------------------------------------------------------------------


def judge_local(name: str, per_host: dict[str, dict[str, Any]]) -> Check:
    """One single-host check over every host's raw result."""
    errors = {h: r["error"] for h, r in per_host.items() if "error" in r}
    if errors:
        return Check(name, "fail", "could not run: " + "; ".join(
            f"{h}: {e}" for h, e in errors.items()), BOTH)
    return _LOCAL_JUDGES[name](per_host)


def _judge_fsync(per_host: dict[str, dict[str, Any]]) -> Check:
    bad = [f"{what} on {h}: {r[what]}" for h, r in per_host.items()
           for what in ("file", "dir") if r.get(what) != "ok"]
    times = [t for r in per_host.values() for t in r.get("fsync_ms", [])]
    figs = _ms(times) if times else {}
    figs["slowest_s"] = round(max(times, default=0) / 1000, 3)
    if bad:
        return Check("fsync", "fail", "fsync failed: " + "; ".join(bad), BOTH, figs)
    noted = [h for h, r in per_host.items() if r.get("fdatasync") != "ok"]
    if noted:
        return Check("fsync", "warn", f"fdatasync fails on {', '.join(noted)} "
                     "(AMS uses fsync)", (), figs)
    return Check("fsync", "ok", "fsync of files and directories works "
                 f"(median {figs['median_ms']} ms, max {figs['max_ms']} ms)", (), figs)


def _judge_excl_local(per_host: dict[str, dict[str, Any]]) -> Check:
    seconds = {h: r["second"] for h, r in per_host.items()}
    firsts = {h: r["first"] for h, r in per_host.items() if r["first"] != "ok"}
    if firsts:
        return Check("excl_local", "fail", f"O_CREAT|O_EXCL failed: {firsts}", BOTH)
    if any(v == "ok" for v in seconds.values()):
        return Check("excl_local", "fail", "a second O_EXCL create of one name succeeded",
                     BOTH, {"loser_errno": seconds})
    odd = {h: v for h, v in seconds.items() if v != "EEXIST"}
    if odd:
        return Check("excl_local", "warn", f"an existing name is refused with {odd} instead "
                     "of EEXIST (AMS accepts it when the file is there)", (),
                     {"loser_errno": seconds})
    return Check("excl_local", "ok", "a second O_EXCL create is refused with EEXIST", (),
                 {"loser_errno": seconds})


def _judge_fcntl_local(per_host: dict[str, dict[str, Any]]) -> Check:
    figs = {"hosts": per_host}
    held = {h: r["hold"] for h, r in per_host.items() if r["hold"] != "ok"}
    if held:
        return Check("fcntl_local", "fail", f"POSIX locks are not supported ({held})",
                     (FCNTL,), figs)
    got = [h for h, r in per_host.items() if r["child"] not in LOCK_REFUSED]
    if got:
        return Check("fcntl_local", "fail", "a second process on "
                     f"{', '.join(got)} was not refused the lock "
                     f"({[per_host[h]['child'] for h in got]})", (FCNTL,), figs)
    return Check("fcntl_local", "ok", "a second process on the same host is refused the lock",
                 (), figs)


def granularity_ns(samples: Sequence[int]) -> int:
    """The coarsest of 1 s, 1 ms, 1 µs, 1 ns that divides every sample."""
    for unit in (1_000_000_000, 1_000_000, 1_000):
        if samples and all(s % unit == 0 for s in samples):
            return unit
    return 1


UNIT_NAMES = {1_000_000_000: "1 s", 1_000_000: "1 ms", 1_000: "1 µs", 1: "1 ns"}


def _judge_mtime(per_host: dict[str, dict[str, Any]]) -> Check:
    g = {h: granularity_ns(r["samples_ns"]) for h, r in per_host.items()}
    figs = {"granularity_ns": g}
    coarse = [h for h, v in g.items() if v >= 1_000_000_000]
    desc = ", ".join(f"{h}: {UNIT_NAMES[v]}" for h, v in g.items())
    if coarse:
        return Check("mtime_granularity", "warn", f"mtimes in whole seconds ({desc}): changes "
                     "within one second look alike by mtime", (), figs)
    return Check("mtime_granularity", "ok", f"mtime resolution {desc}", (), figs)


def fs_clock_offset(samples: Sequence[Sequence[int]], gran_ns: int) -> float:
    """Seconds the filesystem's mtime stamps run ahead (+) or behind (-) this host."""
    offs = []
    for t0, t1, m in samples:
        lo, hi = t0 - gran_ns, t1
        offs.append(0 if lo <= m <= hi else (m - hi if m > hi else m - lo))
    return round(statistics.median(offs) / 1e9, 3)


def _judge_clock_fs(per_host: dict[str, dict[str, Any]]) -> Check:
    offsets = {h: fs_clock_offset(r["samples"], granularity_ns([m for _, _, m in r["samples"]]))
               for h, r in per_host.items()}
    skew = max(abs(v) for v in offsets.values())
    return Check("clock_fs", "ok", _clock_desc("this host's clock and the filesystem's mtimes "
                                               "differ by", skew, offsets),
                 (), {"offset_s": offsets, "skew_s": skew})


_LOCAL_JUDGES = {
    "fsync": _judge_fsync,
    "excl_local": _judge_excl_local,
    "fcntl_local": _judge_fcntl_local,
    "mtime_granularity": _judge_mtime,
    "clock_fs": _judge_clock_fs,
}


def _clock_desc(what: str, skew: float, per: dict[str, float]) -> str:
    desc = ", ".join(f"{h}: {v + 0.0:+.3f} s" for h, v in per.items())  # no "-0.000"
    return f"{what} at most {skew:.3f} s ({desc})"


def judge_clock(c: Check, configured: float) -> Check:
    """Grade a clock check against ``store.clock_skew``."""
    skew = float(c.figures.get("skew_s", 0))
    if skew > MAX_SKEW:
        return Check(c.name, "fail", f"{c.detail}: synchronise the clocks (NTP) first", BOTH,
                     c.figures)
    if skew > configured:
        need = math.ceil(2 * skew + 1)
        return Check(c.name, "warn", f"{c.detail}, more than store.clock_skew = {configured:g}: "
                     f"set it to {need} or synchronise the clocks", (), c.figures)
    return c


# -- cross-host checks -------------------------------------------------------------------


def judge_clock_peers(raw: Sequence[dict[str, Any]], hosts: Sequence[str]) -> Check:
    offsets = {hosts[0]: 0.0}
    error = 0.0
    for f, samples in raw[0].get("samples", {}).items():
        if not samples:
            continue
        best = min(samples, key=lambda s: (s[3] - s[0]) - (s[2] - s[1]))
        t1, t2, t3, t4 = best
        offsets[hosts[int(f)]] = round(((t2 - t1) + (t3 - t4)) / 2, 3)
        error = max(error, ((t4 - t1) - (t3 - t2)) / 2)
    spread = max(offsets.values()) - min(offsets.values())
    skew = round(spread + error, 3)
    figs = {"offset_s": offsets, "uncertainty_s": round(error, 3), "skew_s": skew}
    return Check("clock_peers", "ok", _clock_desc("host clocks (measured through the "
                                                  "filesystem) differ by", skew, offsets),
                 (), figs)


def judge_visibility(kind: str, raws: Sequence[dict[str, Any]], hosts: Sequence[str],
                     deadline: float) -> Check:
    name = f"vis_{kind}"
    obs: list[tuple[int, int, Any]] = [(int(w), o, v) for o, r in enumerate(raws)
                                       for w, v in r.get(kind, [])]
    if not obs:
        return skipped(name, "no other host to observe")
    seen = [v for _, _, v in obs if isinstance(v, (int, float))]
    late = [v for v in seen if v > 0]
    never = [(w, o) for w, o, v in obs if v is None or v == "setup"]
    dirs: dict[str, dict[str, Any]] = {}
    for w, o, v in obs:
        d = dirs.setdefault(f"{hosts[w]}->{hosts[o]}", {"trials": 0, "immediate": 0,
                                                         "late_ms": [], "not_seen": 0})
        d["trials"] += 1
        if v == 0:
            d["immediate"] += 1
        elif isinstance(v, (int, float)):
            d["late_ms"].append(v)
        elif v != "skipped":
            d["not_seen"] += 1
    figs: dict[str, Any] = {"trials": len(obs), "immediate": len(seen) - len(late),
                            "not_seen": len(never), "directions": dirs}
    if seen:
        figs.update(_ms(seen))
    figs["slowest_s"] = round(max(seen, default=0) / 1000, 3)
    late_out, never_out = VIS_POLICY[kind]
    parts = []
    if late:
        parts.append(f"seen late in {len(late)} of {len(obs)} trials "
                     f"(median {statistics.median(late):.0f} ms, max {max(late):.0f} ms)")
    if never:
        parts.append(f"not seen within {deadline:g} s in {len(never)} of {len(obs)} trials")
    if not parts:
        return Check(name, "ok", f"seen at once in {len(obs)} of {len(obs)} trials", (), figs)
    rules = tuple(sorted(set(late_out if late else ()) | set(never_out if never else ()),
                         key=BOTH.index))
    status = "fail" if rules else "warn"
    return Check(name, status, "; ".join(parts) + f": {VIS_CONSEQUENCE[kind]}", rules, figs)


def _race_rounds(results: Sequence[Sequence[str]]) -> tuple[list[list[int]], Counter[str]]:
    """Per round, the winners' indexes; and the losers' errnos."""
    rounds = len(results[0]) if results else 0
    winners = [[h for h in range(len(results)) if results[h][i] == "ok"] for i in range(rounds)]
    losers: Counter[str] = Counter(results[h][i] for i in range(rounds)
                                   for h in range(len(results)) if results[h][i] != "ok")
    return winners, losers


def judge_race(name: str, raws: Sequence[dict[str, Any]], hosts: Sequence[str]) -> Check:
    results = [r["results"] for r in raws]
    winners, losers = _race_rounds(results)
    rounds = len(winners)
    multi = sum(1 for w in winners if len(w) > 1)
    none = sum(1 for w in winners if not w)
    wrong = 0
    for i, w in enumerate(winners):
        if len(w) != 1:
            continue
        for r in raws:
            if name == "rename_race":
                want = "0" + "".join("1" if j == w[0] else "0" for j in range(len(raws)))
                wrong += r["final"][i] != want
            elif name == "excl_race":
                wrong += r["contents"][i] != f"host {w[0]}"
    wins = {hosts[h]: sum(1 for w in winners if w == [h]) for h in range(len(raws))}
    figs = {"rounds": rounds, "one_winner": rounds - multi - none, "several_won": multi,
            "none_won": none, "views_wrong": wrong, "loser_errno": dict(losers), "wins": wins}
    expected = "ENOENT" if name == "rename_race" else "EEXIST"
    odd = {e: n for e, n in losers.items() if e != expected and
           not (name == "rename_race" and e == "ESTALE")}
    if multi or none or wrong:
        bits = []
        if multi:
            bits.append(f"{multi} of {rounds} rounds had several winners")
        if none:
            bits.append(f"{none} had none")
        if wrong:
            bits.append(f"{wrong} outcomes looked different from another host")
        if odd:
            bits.append(f"losers saw {dict(odd)}")
        return Check(name, "fail", "; ".join(bits), BOTH, figs)
    one_sided = " (one host won every round: little real contention)" \
        if rounds > 1 and max(wins.values()) == rounds else ""
    if odd:
        return Check(name, "warn", f"one winner in all {rounds} rounds, but losers saw "
                     f"{dict(odd)} where {expected} was expected{_ERRNO_NOTE[name]}", (), figs)
    return Check(name, "ok", f"one winner in all {rounds} rounds, losers saw "
                 f"{expected}{one_sided}", (), figs)


_ERRNO_NOTE = {
    "rename_race": " (a claim would fail with an error instead of losing quietly)",
    "excl_race": " (as sshfs does; AMS takes EPERM/EACCES as 'exists' when the file is there)",
    "mkdir_race": " (a concurrent mkdir -p in AMS fails on those and is retried later)",
}


def judge_fcntl_exclusion(raws: Sequence[dict[str, Any]], hosts: Sequence[str]) -> Check:
    held = {int(h): v for r in raws for h, v in r["held"].items()}
    tried = [(int(h), o, v) for o, r in enumerate(raws) for h, v in r["tried"].items()]
    handoff = [v for r in raws for v in r["handoff_ms"].values()]
    figs: dict[str, Any] = {"held": {hosts[h]: v for h, v in held.items()},
                            "refused_with": dict(Counter(v for _, _, v in tried)),
                            "handoff_ms": handoff}
    figs["slowest_s"] = round(max((v for v in handoff if v is not None), default=0) / 1000, 3)
    bad = {hosts[h]: v for h, v in held.items() if v != "ok"}
    if bad:
        return Check("fcntl_exclusion", "fail", f"could not take a POSIX lock: {bad}",
                     (FCNTL,), figs)
    got = [(h, o) for h, o, v in tried if v not in LOCK_REFUSED]
    if got:
        pairs = "; ".join(f"{hosts[o]} got it while {hosts[h]} held it" for h, o in got)
        return Check("fcntl_exclusion", "fail", f"the lock did not exclude: {pairs}",
                     (FCNTL,), figs)
    if any(v is None for v in handoff):
        return Check("fcntl_exclusion", "fail", "a released lock could not be taken by the "
                     "next host within 10 s", (FCNTL,), figs)
    return Check("fcntl_exclusion", "ok", "every host was refused while another held the "
                 f"lock; hand-off took at most {max(handoff, default=0):.0f} ms", (), figs)


def judge_counter(name: str, method: str, raws: Sequence[dict[str, Any]],
                  hosts: Sequence[str], rounds: int) -> Check:
    expected = sum(int(r["done"]) for r in raws)
    finals = {hosts[i]: r["final"] for i, r in enumerate(raws)}
    errors = {hosts[i]: r["error"] for i, r in enumerate(raws) if r["error"]}
    secs = {hosts[i]: r["seconds"] for i, r in enumerate(raws)}
    per_op = max((r["seconds"] / r["done"] for r in raws if r["done"]), default=0)
    figs = {"expected": expected, "final": finals, "seconds": secs,
            "slowest_s": round(per_op, 4)}
    ints = [v for v in finals.values() if isinstance(v, int)]
    lost = expected - max(ints) if ints else expected
    figs["lost"] = lost
    rules = (method,)
    if len(ints) != len(finals) or len(set(ints)) > 1:
        return Check(name, "fail", f"hosts read different final values {finals}: at least "
                     f"{lost} of {expected} increments under {method} locks were lost",
                     rules, figs)
    if lost:
        return Check(name, "fail", f"{lost} of {expected} increments under {method} locks "
                     "were lost", rules, figs)
    if errors:
        return Check(name, "fail", f"errors while incrementing: {errors}", rules, figs)
    return Check(name, "ok", f"{expected} increments under {method} locks, none lost "
                 f"({per_op * 1000:.1f} ms each at worst)", (), figs)


def judge_log(name: str, method: str, raws: Sequence[dict[str, Any]],
              hosts: Sequence[str]) -> Check:
    done = [int(r["done"]) for r in raws]
    errors = {hosts[i]: r["error"] for i, r in enumerate(raws) if r["error"]}
    figs: dict[str, Any] = {"appended": dict(zip(hosts, done, strict=False)),
                            "seconds": {hosts[i]: r["seconds"] for i, r in enumerate(raws)}}
    problems = []
    for i, r in enumerate(raws):
        who = hosts[i]
        if r["read_error"]:
            problems.append(f"{who} could not read the log: {r['read_error']}")
        if r["per_writer"] != done:
            problems.append(f"{who} found {r['per_writer']} messages, expected {done}")
        if r["dups"] or r["bad"]:
            problems.append(f"{who} found {r['dups']} duplicates, {r['bad']} damaged")
        if not r["uids_in_order"] and not r["read_error"]:
            problems.append(f"{who} found UIDs out of order")
    figs["seen"] = {hosts[i]: r["per_writer"] for i, r in enumerate(raws)}
    rules = (method,)
    if problems:
        return Check(name, "fail", "; ".join(problems), rules, figs)
    if errors:
        return Check(name, "fail", f"appending failed: {errors}", rules, figs)
    return Check(name, "ok", f"{sum(done)} messages filed by {len(raws)} hosts under {method} "
                 "locks, each found once and intact by every host", (), figs)


def judge_o_append(raws: Sequence[dict[str, Any]], hosts: Sequence[str], rounds: int) -> Check:
    n = len(raws)
    bad = [hosts[i] for i, r in enumerate(raws)
           if r["counts"] != [rounds] * n or r["malformed"] or r["dups"]]
    figs = {"views": {hosts[i]: r for i, r in enumerate(raws)}}
    if bad:
        r = raws[hosts.index(bad[0])]
        return Check("o_append", "warn", f"O_APPEND writes from several hosts interleave or "
                     f"get lost ({bad[0]} counts {r['counts']}, {r['malformed']} malformed); "
                     "AMS never relies on O_APPEND, other software here should not either",
                     (), figs)
    return Check("o_append", "ok", f"{rounds * n} O_APPEND records from {n} hosts intact "
                 "(AMS does not rely on this)", (), figs)


# -- putting it together -------------------------------------------------------------------


def judge_all(local: dict[int, dict[str, Any]], cross: dict[str, list[Any]] | None,
              hosts: Sequence[str], *, rounds: int, deadline: float,
              clock_skew: float) -> list[Check]:
    """Every check, in report order."""
    checks: list[Check] = []
    for name in SINGLE_HOST_CHECKS:
        per_host = {hosts[i]: raw[name] for i, raw in sorted(local.items()) if name in raw}
        checks.append(judge_local(name, per_host))
    if cross is None:
        checks += [skipped(n, "needs a peer (--peers 0)") for n in CROSS_HOST_CHECKS]
    else:
        for name in CROSS_HOST_CHECKS:
            raws = cross.get(name)
            if raws is None:
                checks.append(skipped(name, "not run"))
                continue
            checks.append(_judge_cross(name, raws, hosts, rounds, deadline))
    return [judge_clock(c, clock_skew) if c.name.startswith("clock_") and c.status == "ok"
            else c for c in checks]


def _judge_cross(name: str, raws: list[Any], hosts: Sequence[str], rounds: int,
                 deadline: float) -> Check:
    if name == "clock_peers":
        return judge_clock_peers(raws, hosts)
    if name.startswith("vis_"):
        return judge_visibility(name[4:], raws, hosts, deadline)
    if name in ("rename_race", "excl_race", "mkdir_race"):
        return judge_race(name, raws, hosts)
    if name == "fcntl_exclusion":
        return judge_fcntl_exclusion(raws, hosts)
    if name.endswith("_counter"):
        return judge_counter(name, name.split("_")[0], raws, hosts, rounds)
    if name.startswith("log_append_"):
        return judge_log(name, name.rsplit("_", 1)[1], raws, hosts)
    if name == "o_append":
        return judge_o_append(raws, hosts, rounds)
    raise ValueError(f"no judge for {name}")  # pragma: no cover - a check without a judge


def decide(checks: Sequence[Check], *, lease: float, skew: float, cross_host: bool) -> Verdict:
    """The verdict and the settings to use, from the checks."""
    ruled: set[str] = set()
    reasons = []
    for c in checks:
        if c.status == "fail":
            ruled |= set(c.rules_out or BOTH)
            reasons.append(f"{c.name}: {c.detail}")
    ok = tuple(m for m in BOTH if m not in ruled)
    method = ok[0] if ok else None
    measured_skew = max((float(c.figures.get("skew_s", 0)) for c in checks), default=0.0)
    slowest = max((float(c.figures.get("slowest_s", 0)) for c in checks), default=0.0)
    rec_skew = max(skew, float(math.ceil(2 * measured_skew + 1)))
    rec_lease = max(lease, 4 * rec_skew, float(math.ceil(20 * slowest)))
    settings = {"lock_method": method, "lease_seconds": rec_lease, "clock_skew": rec_skew}
    if method is None:
        return Verdict("unsafe", None, ok, settings, "cross-host" if cross_host else
                       "single-host", tuple(reasons))
    if FCNTL in ruled:
        reasons.insert(0, "fcntl ruled out, dotlock works")
    return Verdict("safe", method, ok, settings, "cross-host" if cross_host else "single-host",
                   tuple(reasons))
