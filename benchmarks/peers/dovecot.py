"""A standalone Dovecot (LMTP into Maildir, optionally IMAP) in a temp dir, for benchmarks.

Debian's packages ``dovecot-core dovecot-lmtpd`` (and ``dovecot-imapd``,
which the IMAP benchmarks use) provide the binaries.  Nothing of the system
instance is used or started: the config is written here, with its own
``base_dir``, logs and users, the way /work/shared/peers-notes.md describes
(section 1), reduced to LMTP:

- passdb and userdb are a passwd-file; ``auth_username_format = %Ln``, so
  ``NAME@example.test`` at RCPT is the user NAME;
- ``mail_location = maildir:~/Maildir`` and ``mail_fsync = optimized`` (the
  default: fsync of each delivered file);
- LMTP on ``127.0.0.1:<free port>``, 2 processes kept ready, up to 64;
- with ``imap=True`` also IMAP on ``127.0.0.1:<another free port>``:
  imap-login in high-performance mode (``service_count = 0``), one ``imap``
  process per session (Dovecot's default), and the per-user connection and
  process limits raised to ``imap_connections``.  :class:`MaildirWriter`
  fills a user's Maildir directly (files in ``cur/`` named the way Dovecot
  names its own), which is much faster than delivering by LMTP; Dovecot
  builds its index and ``dovecot-uidlist`` at the first SELECT.

Run as root the mail is owned by ``nobody`` (uid 65534) and the services run
as Debian's ``dovecot``/``dovenull`` users; run as anyone else it is
Dovecot's rootless mode, every process and file as that user.

By hand (prints the LMTP address, and the IMAP one with ``--imap``; stops on
Enter)::

    python -m benchmarks.peers.dovecot --user bench --dir /var/tmp [--imap]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
LMTP_BINARY = "/usr/lib/dovecot/lmtp"
PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd")

CONFIG = """\
# Standalone Dovecot for the AMS benchmarks; everything lives under {base}
base_dir  = {base}/run
state_dir = {base}/state
instance_name = ams-bench-dovecot-{instance}
log_path      = {base}/log/dovecot.log
info_log_path = {base}/log/dovecot-info.log

protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# "bench@example.test" at RCPT is the user "bench"
auth_username_format = %Ln
auth_cache_size = 1M

default_internal_user = {internal_user}
default_login_user    = {login_user}
first_valid_uid = {uid}
last_valid_uid  = {uid}
first_valid_gid = {gid}
last_valid_gid  = {gid}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {base}/users
}}

mail_location = maildir:~/Maildir
recipient_delimiter = +
lda_mailbox_autocreate = yes
mail_fsync = optimized
namespace inbox {{
  inbox = yes
  separator = /
}}

service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
  process_min_avail = 2
  process_limit = 64
}}
protocol lmtp {{
  postmaster_address = postmaster@example.test
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
default_process_limit = {process_limit}
default_client_limit = {client_limit}
{imap_config}"""

IMAP_CONFIG = """
# IMAP, for the IMAP benchmarks
mail_max_userip_connections = {connections}
protocol imap {{
  mail_max_userip_connections = {connections}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  # high-performance mode: each login process serves many connections
  service_count = 0
  process_min_avail = 2
  client_limit = {connections}
}}
service imap {{
  process_limit = {processes}
}}
"""
IMAP_BINARY = "/usr/lib/dovecot/imap"


def unavailable(*, imap: bool = False) -> str | None:
    """Why Dovecot LMTP (and IMAP, with ``imap``) cannot run here, or None if it can."""
    needed = [(DOVECOT, "dovecot-core"), (LMTP_BINARY, "dovecot-lmtpd")]
    if imap:
        needed.append((IMAP_BINARY, "dovecot-imapd"))
    for path, pkg in needed:
        if not os.access(path, os.X_OK):
            return f"{path} not found (Debian package {pkg})"
    if os.geteuid() == 0:
        for name in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                return f"system user {name!r} is missing (it comes with dovecot-core)"
    return None


def version() -> str:
    try:
        out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def missing_packages(packages: Iterable[str]) -> list[str]:
    """The Debian packages of ``packages`` that are not installed."""
    out = []
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                           text=True)
        if "install ok installed" not in r.stdout:
            out.append(p)
    return out


def apt_install(packages: Sequence[str]) -> str | None:
    """Install Debian packages non-interactively, starting no service.

    Returns None on success, else why not.  Needs root and apt-get.  While it
    runs, a ``policy-rc.d`` that denies every service start is put in place
    (unless one exists already), so neither the system Postfix nor the system
    Dovecot is started by the install.
    """
    if not packages:
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "no apt-get here"
    if os.geteuid() != 0:
        return f"not root, cannot install {' '.join(packages)}"
    policy = Path("/usr/sbin/policy-rc.d")
    ours = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# written by the AMS benchmark during apt-get install\n"
                          "exit 101\n")
        policy.chmod(0o755)
        ours = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
                return f"{' '.join(cmd[:2])} failed: {' / '.join(tail)}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"apt-get failed: {e}"
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """One standalone Dovecot instance delivering by LMTP into Maildir homes.

    With ``imap`` it also serves IMAP (``imap_port``), for up to
    ``imap_connections`` concurrent sessions of one user.  Every user's
    password is ``password``.
    """

    def __init__(self, base: Path, users: Iterable[str], *, imap: bool = False,
                 imap_connections: int = 1000, password: str = "secret") -> None:
        self.base = base
        self.users = list(users)
        self.password = password
        self.conf = base / "dovecot.conf"
        self.port = 0
        self.imap = imap
        self.imap_connections = imap_connections
        self.imap_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self.uid = self.gid = 65534  # nobody / nogroup
            self.internal_user, self.login_user = "dovecot", "dovenull"
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.internal_user = self.login_user = pwd.getpwuid(self.uid).pw_name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def home(self, user: str) -> Path:
        return self.base / "mail" / user

    def start(self, timeout: float = 30.0) -> None:
        b = self.base
        for d in ("run", "state", "log"):
            (b / d).mkdir(parents=True, exist_ok=True)
        mail = b / "mail"
        mail.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            b.chmod(0o755)  # the mail user must reach its home
            os.chown(mail, self.uid, self.gid)
        self.port = free_port()
        imap_config = ""
        process_limit, client_limit = 1024, 4096
        if self.imap:
            self.imap_port = free_port()
            n = self.imap_connections
            process_limit, client_limit = max(1024, n + 100), max(4096, 4 * n)
            imap_config = IMAP_CONFIG.format(connections=n, port=self.imap_port,
                                             processes=n + 50)
        self.conf.write_text(CONFIG.format(
            base=b, instance=os.getpid(), internal_user=self.internal_user,
            login_user=self.login_user, uid=self.uid, gid=self.gid, port=self.port,
            protocols="lmtp imap" if self.imap else "lmtp", process_limit=process_limit,
            client_limit=client_limit, imap_config=imap_config))
        (b / "users").write_text("".join(
            f"{u}:{{PLAIN}}{self.password}:{self.uid}:{self.gid}::{self.home(u)}::\n" for u in self.users))
        out = open(b / "log" / "master.out", "ab")  # noqa: SIM115
        try:
            # -F: the master stays our child; its own session, so the whole
            # instance is one process group to signal.
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        self._wait_greeting("LMTP", self.port, b"220", deadline)
        if self.imap:
            self._wait_greeting("IMAP", self.imap_port, b"* OK", deadline)

    def _wait_greeting(self, what: str, port: int, greeting: bytes, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with status {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(512).startswith(greeting):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot's {what} did not answer on 127.0.0.1:{port} "
                                   f"in time: {self.log_tail()}")
            time.sleep(0.1)

    def maildir(self, user: str) -> MaildirWriter:
        """A writer that fills ``user``'s Maildir INBOX directly (see MaildirWriter)."""
        return MaildirWriter(self.home(user), self.uid, self.gid)

    def delivered(self, user: str) -> int:
        """Messages in the user's Maildir INBOX (new/ and cur/)."""
        n = 0
        for sub in ("new", "cur"):
            try:
                with os.scandir(self.home(user) / "Maildir" / sub) as it:
                    n += sum(1 for _ in it)
            except FileNotFoundError:
                pass
        return n

    def remove_home(self, user: str) -> None:
        shutil.rmtree(self.home(user), ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        text = []
        for name in ("master.out", "dovecot.log"):
            try:
                text += (self.base / "log" / name).read_text(errors="replace").splitlines()
            except OSError:
                pass
        return " / ".join(text[-lines:]) or "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master, then SIGKILL whatever of its group is left."""
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


class MaildirWriter:
    """Writes messages straight into a Maildir's ``cur/``, as Dovecot itself names them.

    A file is ``<time>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>:2,<flags>``:
    ``S=`` is the file's size and ``W=`` its size with CRLF line ends, so
    Dovecot never has to read a file to answer RFC822.SIZE; the flags are the
    Maildir letters (``F`` flagged, ``R`` replied, ``S`` seen, ``D`` draft,
    ``T`` deleted).  The file's mtime is the message's internal date.  Dovecot
    gives UIDs to files it has not seen in the order of their names, so
    messages written with strictly increasing ``date`` get increasing UIDs
    in the order written.  Nothing is fsynced: the benchmarks read what they
    wrote, from the page cache, and nothing here has to survive a crash.
    Files are owned by the mail user (``uid``/``gid``).
    """

    LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S",
               "\\Deleted": "T"}

    def __init__(self, home: Path, uid: int, gid: int) -> None:
        self.dir = home / "Maildir"
        self.uid, self.gid = uid, gid
        self.count = 0
        self.last_date = 0
        for d in (home, self.dir, self.dir / "cur", self.dir / "new", self.dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(d, uid, gid)

    def add(self, message: bytes, *, flags: Iterable[str] = (), date: int) -> None:
        """One message, LF line ends (Dovecot's own form on disk)."""
        if date <= self.last_date:
            raise ValueError("MaildirWriter.add: dates must increase strictly")
        self.last_date = date
        letters = "".join(sorted(self.LETTERS[f] for f in flags if f in self.LETTERS))
        vsize = len(message) + message.count(b"\n") - message.count(b"\r\n")
        name = (f"{date}.M{self.count % 1_000_000}P{os.getpid()}Q{self.count}.bench,"
                f"S={len(message)},W={vsize}:2,{letters}")
        path = self.dir / "cur" / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, message)
            if os.geteuid() == 0:
                os.fchown(fd, self.uid, self.gid)
        finally:
            os.close(fd)
        os.utime(path, (date, date))
        self.count += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers.dovecot",
                                 description="Run a standalone Dovecot LMTP until Enter.")
    ap.add_argument("--user", action="append", default=[], help="a Maildir user (repeatable)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--imap", action="store_true", help="also serve IMAP")
    args = ap.parse_args(argv)
    why = unavailable(imap=args.imap)
    if why:
        print(f"Dovecot: not available: {why}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="ams-bench-dovecot-", dir=args.dir))
    d = Dovecot(base, args.user or ["bench"], imap=args.imap)
    try:
        d.start()
        imap = f", IMAP on 127.0.0.1:{d.imap_port}" if args.imap else ""
        print(f"Dovecot {version()} LMTP on {d.address}{imap}, config {d.conf}; password "
              f"{d.password!r}; Enter stops it")
        sys.stdin.readline()
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
