"""Distributed filesystems on one machine: several client mounts of one volume.

The multi-host tests, ``benchmarks/bench_distfs.py`` and
``examples/multihost/run_pool.py`` use this module to bring up a real
distributed filesystem and mount it several times.  Each mount is its own
FUSE client process, with its own connections, caches and lock owner: a
simulated host.

Theory of operation
-------------------
:func:`open_pool` does everything and undoes it::

    with open_pool("moosefs", ["a", "b", "c"]) as pool:
        pool.mounts["a"], pool.mounts["b"], ...      # one mount point per host
        pool.add_client("d")                         # a host joining later

Kinds (:data:`KINDS`):

``glusterfs``
    glusterd (started here unless one is already running, which is then
    left alone), a one-brick volume with the coherent ("strict") options of
    docs/deployment.md, and ``glusterfs`` FUSE clients with direct I/O and
    no kernel caching.  ``glusterfs-default``: the same volume and clients
    with GlusterFS's default options, which are not coherent between clients.
``moosefs``
    an ``mfsmaster`` and one ``mfschunkserver`` (goal 1), and ``mfsmount``
    clients with ``mfscachemode=DIRECT`` and no attribute caching.  The
    master refuses loopback, so it listens on the address of a bridge made
    here; without ``ip link add`` the kind is unavailable.
``sshfs``
    an ``sshd`` of our own on a free port and ``sshfs`` clients with caching
    off: a shared filesystem *without* cross-client locks, the negative
    control.
``local``
    no filesystem at all: every "client" is the same local directory, the
    baseline for benchmarks.

Network: when ``ip link add`` and ``ip netns add`` work, the servers listen
on the address of a bridge (a private 10.x /24 that no route uses yet) and
each client's FUSE daemon runs in its own network namespace, joined to the
bridge by a veth pair, so :meth:`Pool.cut` can partition one host away.
Mounts are made with ``nsenter --net`` (not ``ip netns exec``, which would
unshare the mount namespace and hide the mount from everyone else).

Robustness: every daemon runs in the foreground as our child, so it is
stopped by its pid.  What a pool creates (pids, mounts, volumes, links,
namespaces) is written to ``state.json`` in its base directory as it goes;
a later pool, before starting, undoes whatever a dead process left behind
(its base directories are ``/var/tmp/ams-distfs-PID-*``).  An advisory lock
(``/run/ams-distfs.lock``) keeps two processes from running pools at once,
since glusterd is one per machine.

Unavailable (:class:`Unavailable`, a skip in tests) only when the kernel has
no FUSE (or we are not root, so nothing can be mounted), or for MooseFS when
no address can be made; a missing package is a :class:`SetupError` that
says to run ``scripts/setup.sh``.

This module is the pool and the machine-wide bookkeeping; the filesystems
themselves (servers, clients, the network, the state file) are in
:mod:`tests.distfs_fs`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.distfs_fs import (
    SSHFS,
    Cluster,
    GlusterFS,
    LocalDir,
    MooseFS,
    Net,
    SetupError,
    State,
    Unavailable,
    fuse_unavailable,
    mounts_under,
    need,
    nsenter,
    undo,
)

KINDS = ("glusterfs", "glusterfs-default", "moosefs", "sshfs", "local")
#: Where pools live: on disk (the brick and chunk store need real xattrs and
#: space), readable by the ``mfs`` user.
BASE_DIR = Path(os.environ.get("AMS_DISTFS_DIR", "/var/tmp"))
BASE_PREFIX = "ams-distfs-"
LOCK_FILE = Path("/run/ams-distfs.lock")

__all__ = ["KINDS", "Pool", "SetupError", "Unavailable", "clean_leftovers", "nsenter",
           "open_pool"]


# -- leftovers of dead pools ---------------------------------------------------------------


def clean_leftovers() -> list[str]:
    """Undo pools of processes that are gone; returns what is left over."""
    notes: list[str] = []
    for base in sorted(BASE_DIR.glob(BASE_PREFIX + "*")):
        m = re.match(re.escape(BASE_PREFIX) + r"(\d+)-", base.name)
        if not m or not base.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue  # a live pool (the advisory lock says it is ours or waiting)
        notes += undo(State.load(base / "state.json"), base)
        if not mounts_under(str(base) + "/"):
            shutil.rmtree(base, ignore_errors=True)
    return notes


# -- one machine-wide advisory lock --------------------------------------------------------


_lock_fd: int | None = None
_lock_users = 0


def _lock_machine(timeout: float) -> None:
    global _lock_fd, _lock_users
    if _lock_fd is not None:
        _lock_users += 1
        return
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise SetupError(f"another process (pid {holder or '?'}) has distributed "
                                 f"filesystems up on this machine ({LOCK_FILE})") from None
            time.sleep(0.5)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _lock_fd, _lock_users = fd, 1


def _unlock_machine() -> None:
    global _lock_fd, _lock_users
    _lock_users -= 1
    if _lock_users == 0 and _lock_fd is not None:
        os.close(_lock_fd)
        _lock_fd = None


# -- the pool: one filesystem, N hosts ---------------------------------------------------------


class Pool:
    """A running filesystem with one mount per host name."""

    def __init__(self, kind: str, base: Path, *, use_netns: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown filesystem kind {kind!r} (known: {', '.join(KINDS)})")
        self.kind = kind
        self.base = base
        self.state = State(base / "state.json")
        self.net: Net | None = None
        self.use_netns = use_netns
        self.mounts: dict[str, Path] = {}
        self.cluster: Cluster
        if kind == "local":
            self.cluster = LocalDir(base, self.state, None)
        elif kind.startswith("glusterfs"):
            self.cluster = GlusterFS(base, self.state, None, strict=kind == "glusterfs")
        elif kind == "moosefs":
            self.cluster = MooseFS(base, self.state, None)
        else:
            self.cluster = SSHFS(base, self.state, None)

    @property
    def fcntl_across_clients(self) -> bool:
        return self.cluster.fcntl_across_clients

    def start(self, hosts: Sequence[str]) -> None:
        self.state.save()
        if self.kind != "local":
            reason = fuse_unavailable()
            if reason:
                raise Unavailable(reason)
            need("ip", "nsenter", "umount", *self.cluster.programs)
            if self.use_netns or self.cluster.needs_address:
                self.net = Net(self.state, secrets.token_hex(2))
                try:
                    self.net.create()
                except Unavailable:
                    self.net = None
                    if self.cluster.needs_address:
                        raise
                if self.net is not None and not self.use_netns:
                    self.net.namespaces = False
                self.cluster.net = self.net
        self.cluster.start()
        for h in hosts:
            self.add_client(h)

    def add_client(self, name: str) -> Path:
        """Mount the filesystem for host ``name`` (in its own namespace if possible)."""
        if name in self.mounts:
            raise ValueError(f"host {name} is already mounted")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", name):
            raise ValueError(f"host names here are 1-6 lowercase letters/digits, not {name!r}")
        netns = None
        if self.net is not None:
            made = self.net.add_host(name)
            netns = made[0] if made else None
        self.mounts[name] = self.cluster.mount(name, netns)
        return self.mounts[name]

    def remove_client(self, name: str) -> None:
        self.cluster.unmount(name)
        self.mounts.pop(name, None)

    def host_netns(self, name: str) -> str | None:
        if self.net is None or name not in self.net.hosts:
            return None
        return self.net.hosts[name][0]

    def host_ip(self, name: str) -> str:
        if self.net is None or name not in self.net.hosts:
            return "127.0.0.1"
        return self.net.hosts[name][1]

    def cut(self, name: str) -> None:
        if self.net is None or name not in self.net.hosts:
            raise Unavailable("no network namespaces here: cannot partition a host")
        self.net.cut(name)

    def heal(self, name: str) -> None:
        assert self.net is not None
        self.net.heal(name)

    def stop(self) -> list[str]:
        """Tear everything down; returns what could not be undone (if anything)."""
        for name in list(self.mounts):
            with contextlib.suppress(Exception):
                self.remove_client(name)
        with contextlib.suppress(Exception):
            self.cluster.stop()
        problems = undo(self.state, self.base)
        if not problems:
            shutil.rmtree(self.base, ignore_errors=True)
        return problems


@contextlib.contextmanager
def open_pool(kind: str, hosts: Sequence[str] = ("a", "b", "c"), *, use_netns: bool = True,
              lock_timeout: float = 240.0) -> Iterator[Pool]:
    """Bring up ``kind`` with one mount per host; tear it all down on exit."""
    _lock_machine(lock_timeout)
    try:
        clean_leftovers()
        base = Path(os.path.realpath(BASE_DIR)) / f"{BASE_PREFIX}{os.getpid()}-{kind}-" \
                                                   f"{secrets.token_hex(3)}"
        base.mkdir(parents=True)
        pool = Pool(kind, base, use_netns=use_netns)
        try:
            pool.start(hosts)
            yield pool
        finally:
            problems = pool.stop()
            if problems:
                raise SetupError(f"teardown of {kind} left: {'; '.join(problems)}")
    finally:
        _unlock_machine()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.distfs KIND``: bring KIND up with three mounts, print them,
    wait for Ctrl-C, tear down (for trying things by hand)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m tests.distfs", description=main.__doc__)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--hosts", default="a,b,c")
    p.add_argument("--no-netns", action="store_true")
    args = p.parse_args(argv)
    try:
        with open_pool(args.kind, args.hosts.split(","), use_netns=not args.no_netns) as pool:
            for h, mp in pool.mounts.items():
                print(f"{h}: {mp} (netns {pool.host_netns(h) or '-'}, {pool.host_ip(h)})")
            print("Ctrl-C tears down.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except (Unavailable, SetupError) as e:
        print(f"distfs: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

