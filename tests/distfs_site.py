"""An AMS site over a :mod:`tests.distfs` pool: a config per host, role processes,
mail in, and the checks that every message was filed exactly once.

Each host of the pool gets its own config: the store at *its* mount of the
shared filesystem, its own ``host.name`` and its own cache directory on
local disk.  Roles run as the real commands (``ams mx``, ``ams worker``,
``ams imap``), one process each, so they share nothing but the filesystem.
Several sites can live on one pool (each in its own store directory), so a
test session brings each filesystem up once.
"""

from __future__ import annotations

import contextlib
import email.parser
import imaplib
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from ams.config import Config, config_from_dict, render_config
from ams.store import RecordType, Store, UserRegistry, fold
from ams.store.users import default_hasher
from tests.delivery_procs import HASHER, config_dict
from tests.distfs import Pool, nsenter

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
WAIT = 60.0
#: Every user of a test site has this password.
PASSWORD = "distfs-pw"
_HEADERS = email.parser.BytesHeaderParser()


@dataclass
class Site:
    """One store on a pool, and the config each host uses for it."""

    pool: Pool
    local: Path  # local disk: configs, caches, role logs
    name: str = "store"
    lock_method: str = "fcntl"
    fsync: str = "always"
    lease: float = 3.0
    skew: float = 0.5

    def config_dict(self, host: str) -> dict[str, Any]:
        d = config_dict(self.local, fsync=self.fsync, lease=self.lease, skew=self.skew,
                        attempts=1000, lock_method=self.lock_method, host=host)
        d["store"]["root"] = str(self.pool.mounts[host] / self.name)
        d["tls"] = {"allow_plaintext_auth": True}
        return d

    def config(self, host: str) -> Config:
        return config_from_dict(self.config_dict(host))

    def config_file(self, host: str) -> Path:
        path = self.local / f"{self.name}-{host}.toml"
        path.write_text(render_config(self.config(host)))
        return path

    def store(self, host: str) -> Store:
        return Store(self.config(host))

    def initialise(self, users: Sequence[str], host: str = "a") -> UserRegistry:
        """Create the store if needed and add ``users``.  Without fsync: the
        set-up is not under test, and each user is some 30 files."""
        cfg = self.config_dict(host)
        cfg["store"]["fsync"] = "never"
        store = Store.initialise(config_from_dict(cfg))
        reg = UserRegistry(store, hasher=_OneHash())
        for u in users:
            reg.add(u, PASSWORD)
        return reg

    def registry(self, host: str) -> UserRegistry:
        return UserRegistry(self.store(host), hasher=HASHER)


class _OneHash(PasswordHasher):
    """The default argon2 parameters, so a bridge never rehashes at login (a
    write to the shared store per user), but one hash for the one password
    every user here has: adding 50 users costs one hash, not 50."""

    _cache: dict[str, str] = {}

    def __init__(self) -> None:
        d = default_hasher()
        super().__init__(time_cost=d.time_cost, memory_cost=d.memory_cost,
                         parallelism=d.parallelism, hash_len=d.hash_len, salt_len=d.salt_len)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        key = password if isinstance(password, str) else password.decode()
        if key not in self._cache:
            self._cache[key] = super().hash(password)
        return self._cache[key]


Report = tuple[int, dict[str, Any], str]


def run_doctor(pool: Pool, hosts: Sequence[str], *, store: str = "store",
               rounds: int = 20) -> dict[str, Report]:
    """``ams doctor`` on ``hosts`` at once against the store root ``store``,
    as a site does before starting roles; host -> (exit status, JSON report
    or {}, stderr).  Each host's verdict stays in the store for the roles'
    start-up guard."""
    procs = {}
    for h in hosts:
        root = pool.mounts[h] / store
        root.mkdir(exist_ok=True)
        procs[h] = subprocess.Popen(
            [sys.executable, "-m", "ams.cli", "doctor", "--root", str(root), "--host", h,
             "--peers", str(len(hosts) - 1), "--rounds", str(rounds), "--wait", "30", "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for h, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        try:
            report = json.loads(stdout)
        except ValueError:
            report = {}
        out[h] = (proc.returncode, report, stderr)
    return out


# -- role processes -----------------------------------------------------------------------


@dataclass
class Role:
    host: str
    command: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in text if "ERROR" in ln or "Traceback" in ln or "Error" in ln]
        return " / ".join((errors or text)[-lines:]) or "(empty log)"


@dataclass
class Roles:
    """Role processes of one site; :meth:`close` stops whatever is still running."""

    site: Site
    running: list[Role] = field(default_factory=list)
    in_netns: bool = False

    def start(self, host: str, command: str, *args: str, env: dict[str, str] | None = None,
              ) -> Role:
        log = self.site.local / f"{self.site.name}-{host}-{command}-{len(self.running)}.log"
        netns = self.site.pool.host_netns(host) if self.in_netns else None
        listen = []
        if command in ("mx", "imap"):
            listen = ["--listen", f"{self.site.pool.host_ip(host) if netns else '127.0.0.1'}:0"]
        argv = [*nsenter(netns), sys.executable, "-m", "ams.cli", "--config",
                str(self.site.config_file(host)), command, *listen, *args]
        e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        e.pop("AMS_LOG_LEVEL", None)
        with open(log, "ab") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, env=e, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if listen else subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        role = Role(host, command, proc, log)
        self.running.append(role)
        if listen:
            role.port = self._wait_listening(role)
        return role

    def _wait_listening(self, role: Role) -> int:
        assert role.proc.stdout is not None
        found: list[int] = []

        def read() -> None:
            assert role.proc.stdout is not None
            line = role.proc.stdout.readline().decode(errors="replace")
            m = re.search(r"listening on \S+:(\d+)", line)
            if m:
                found.append(int(m.group(1)))

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(WAIT)
        if not found:
            self.stop(role)
            raise RuntimeError(f"ams {role.command} on {role.host} did not start: {role.tail()}")
        return found[0]

    def mx(self, host: str) -> Role:
        return self.start(host, "mx")

    def imap(self, host: str) -> Role:
        return self.start(host, "imap")

    def workers(self, host: str, count: int = 2) -> Role:
        return self.start(host, "worker", "--count", str(count))

    def stop(self, role: Role, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Signal a role's process group and wait; its exit status."""
        if role.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(role.proc.pid, sig)
        try:
            role.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(role.proc.pid, signal.SIGKILL)
            role.proc.wait(10)
        if role.proc.stdout is not None:
            role.proc.stdout.close()
        if role in self.running:
            self.running.remove(role)
        return role.proc.returncode

    def close(self) -> None:
        for role in list(reversed(self.running)):
            self.stop(role, timeout=20)


@contextlib.contextmanager
def roles(site: Site, *, in_netns: bool = False) -> Iterator[Roles]:
    r = Roles(site, in_netns=in_netns)
    try:
        yield r
    finally:
        r.close()


# -- mail in ------------------------------------------------------------------------------------


def message(msgid: str, rcpts: Sequence[str], size: int = 600) -> bytes:
    head = (f"From: sender@far.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {msgid}\r\n"
            f"Message-ID: <{msgid}@far.test>\r\n\r\n")
    line = f"{msgid} lorem ipsum dolor sit amet\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def plan_mail(count: int, users: Sequence[str], *, tag: str = "m",
              second_every: int = 10) -> list[tuple[str, list[str]]]:
    """``count`` messages over ``users`` round robin; every ``second_every``-th
    also goes to the next user (one spool entry, two deliveries)."""
    plans = []
    for i in range(count):
        rcpts = [users[i % len(users)]]
        if second_every and i % second_every == 0:
            rcpts.append(users[(i + 1) % len(users)])
        plans.append((f"{tag}{i}", [f"{u}@{DOMAIN}" for u in rcpts]))
    return plans


def expected_ids(plans: Sequence[tuple[str, list[str]]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for msgid, rcpts in plans:
        for r in rcpts:
            out.setdefault(r.split("@")[0], Counter())[f"<{msgid}@far.test>"] += 1
    return out


def send_mail(port: int, plans: Sequence[tuple[str, list[str]]], *, sessions: int = 8,
              progress: Callable[[int], None] | None = None) -> list[str]:
    """Send every planned message over ``sessions`` SMTP connections; the
    refusals and errors, if any (one string each)."""
    errors: list[str] = []
    sent = [0]
    lock = threading.Lock()

    def session(share: Sequence[tuple[str, list[str]]]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as s:
                for msgid, rcpts in share:
                    refused = s.sendmail("sender@far.test", rcpts, message(msgid, rcpts))
                    with lock:
                        sent[0] += 1
                        if refused:
                            errors.append(f"{msgid}: {refused}")
                    if progress:
                        progress(sent[0])
        except (OSError, smtplib.SMTPException) as e:
            with lock:
                errors.append(f"session: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=session, args=(plans[i::sessions],))
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# -- checks ---------------------------------------------------------------------------------


def filed(reg: UserRegistry, user: str, mailbox: str = "INBOX") -> tuple[Counter[str], int]:
    """(Message-ID -> copies filed, APPENDs whose delivery id repeats) for one mailbox."""
    log = reg.mailboxes(user).open(mailbox)
    state = fold(log.reader())
    ids = Counter(m.delivery_id for m in state.messages.values())
    repeats = sum(n - 1 for n in ids.values() if n > 1)
    got: Counter[str] = Counter()
    segments: dict[tuple[int, int], bytes] = {}  # one read per segment, not per message
    for uid in sorted(state.messages):
        loc = state.messages[uid].location
        key = (loc.generation, loc.seq)
        if key not in segments:
            segments[key] = log.segment_path(*key).read_bytes()
        raw = segments[key][loc.offset:loc.offset + loc.size]
        got[str(_HEADERS.parsebytes(raw).get("Message-ID", ""))] += 1
    return got, repeats


def check_exactly_once(reg: UserRegistry, expected: dict[str, Counter[str]]) -> list[str]:
    """One line per user whose INBOX is not exactly what was sent; [] if all are."""
    problems = []
    for user, want in sorted(expected.items()):
        got, repeats = filed(reg, user)
        if got != want or repeats:
            lost = sum((want - got).values())
            dup = sum((got - want).values())
            problems.append(f"{user}: {sum(got.values())} filed, {sum(want.values())} sent, "
                            f"{lost} lost, {dup} extra, {repeats} repeated delivery ids")
    return problems


class FiledCounter:
    """Counts APPEND records in some users' INBOXes as they arrive, reading
    only each log's new tail (as an IMAP bridge does)."""

    def __init__(self, reg: UserRegistry, users: Sequence[str]) -> None:
        self.readers = [reg.mailboxes(u).open("INBOX").reader() for u in users]
        self.count = 0

    def poll(self) -> int:
        for rd in self.readers:
            self.count += sum(1 for rec in rd.poll().records
                              if rec.header.type == RecordType.APPEND)
        return self.count

    def wait(self, total: int, *, timeout: float, watch: Sequence[Role] = (),
             interval: float = 0.3) -> int:
        """Poll until ``total`` are filed; the count reached (short on timeout)."""
        deadline = time.monotonic() + timeout
        while self.poll() < total and time.monotonic() < deadline:
            for r in watch:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"ams {r.command} on {r.host} exited "
                                       f"({r.proc.returncode}): {r.tail()}")
            time.sleep(interval)
        return self.count


# -- IMAP views ------------------------------------------------------------------------------


_FETCH = re.compile(rb"UID (\d+).*?FLAGS \(([^)]*)\)")


def imap_login(port: int, user: str) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
    c.login(user, PASSWORD)
    return c


def imap_view(c: imaplib.IMAP4, mailbox: str = "INBOX") -> list[tuple[int, frozenset[str]]]:
    """(UID, flags) of every message, as the bridge reports them."""
    typ, _ = c.select(mailbox)
    assert typ == "OK"
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
    assert typ == "OK"
    out = []
    for item in data:
        if item is None:
            continue
        raw = item if isinstance(item, bytes) else item[0]
        m = _FETCH.search(raw)
        if m:
            out.append((int(m.group(1)), frozenset(m.group(2).decode().split())))
    return sorted(out)


def idle_latency(port: int, user: str, trigger: Callable[[], None],
                 timeout: float = 30.0) -> float:
    """IDLE on ``user``'s INBOX through the bridge at ``port``, run ``trigger``,
    and return the seconds until the bridge reports a new EXISTS."""
    c = imap_login(port, user)
    try:
        c.select("INBOX")
        tag = c._new_tag()
        c.send(tag + b" IDLE\r\n")
        assert c.readline().startswith(b"+")
        assert c.sock is not None
        c.sock.settimeout(timeout)
        t0 = time.monotonic()
        trigger()
        while not c.readline().endswith(b"EXISTS\r\n"):
            pass
        elapsed = time.monotonic() - t0
        c.send(b"DONE\r\n")
        c.readline()
        return elapsed
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            c.logout()


# -- racers: ``python -m tests.distfs_site race OP DIR ROUNDS [METHOD]`` ------------------------


def race(op: str, directory: str, rounds: str, method: str = "dotlock") -> None:
    """One racer on one host's mount: prints ``ready``, waits for a line on
    stdin, then runs ``rounds`` rounds of ``op`` and prints one JSON result
    (what it won, or the error that escaped)."""
    from ams.store import _fs
    from ams.store.lock import Lock

    d = Path(directory)
    me = f"{os.getpid()}"
    won: list[int] = []
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        for i in range(int(rounds)):
            if op == "excl":
                if _fs.create_exclusive(d / f"x{i}", me.encode()):
                    won.append(i)
            elif op == "rename":
                if _fs.rename_claim(d / f"src{i}", d / f"dst{i}.{me}"):
                    won.append(i)
            elif op == "mkdir":
                _fs.makedirs(d / f"d{i}" / "e")
            elif op == "lockfile":  # first use of an fcntl lock whose file is not there yet
                with Lock(method="fcntl", fcntl_path=d / f"l{i}", dot_path=d / f"l{i}.lock",
                          host=me, lease=5.0, skew=0.5, timeout=60.0):
                    won.append(i)
            elif op == "lock":
                lk = Lock(method=method, fcntl_path=d / "lockfile",  # type: ignore[arg-type]
                          dot_path=d / "counter.lock", host=f"h{me}", lease=5.0, skew=0.5,
                          timeout=60.0)
                with lk:
                    path = d / "counter"
                    n = int(path.read_text() or "0") if path.exists() else 0
                    lk.check()
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
                    try:
                        _fs.pwrite_all(fd, f"{n + 1:010d}".encode(), 0)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                won.append(i)
            else:
                raise SystemExit(f"unknown race {op}")
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        print(json.dumps({"won": won, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    print(json.dumps({"won": won, "error": None}), flush=True)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"race": race}[cmd](*rest)
