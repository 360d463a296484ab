"""The filesystems of :mod:`tests.distfs`: starting servers, mounting clients,
and the process, mount and state helpers they share.

Every daemon runs in the foreground as our child, so it is stopped by its
pid; what is made is recorded in a :class:`State` file as it is made, so
:func:`undo` can take it down even after the process that made it died.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ams.index._fstype import mounts
from tests.waiting import wait_for

GLUSTER_VOLUME_PREFIX = "amsdfs"
#: The GlusterFS performance translators that make clients incoherent.
GLUSTER_STRICT_OFF = ("write-behind", "flush-behind", "quick-read", "open-behind",
                      "stat-prefetch", "io-cache", "read-ahead", "readdir-ahead", "nl-cache")
GLUSTER_MOUNT_STRICT = ("--direct-io-mode=enable", "--attribute-timeout=0",
                        "--entry-timeout=0", "--negative-timeout=0")
MFS_MOUNT_STRICT = ("mfscachemode=DIRECT,mfsattrcacheto=0,mfsentrycacheto=0,"
                    "mfsdirentrycacheto=0,mfsnegentrycacheto=0")
SSHFS_STRICT = "dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0,direct_io,sshfs_sync"
WAIT = 60.0
#: Candidate private subnets for the bridge; the first unused one is taken.
SUBNETS = ("10.213.77.0/24", "10.213.78.0/24", "10.231.77.0/24", "10.177.213.0/24")


class Unavailable(Exception):
    """This machine cannot run the filesystem (tests skip, with this reason)."""


class SetupError(Exception):
    """Bringing the filesystem up failed (tests fail, with this reason)."""


# -- small helpers ------------------------------------------------------------------------


def fuse_unavailable() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "the kernel has no FUSE (/dev/fuse is missing)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"/dev/fuse cannot be opened ({e.strerror})"
    os.close(fd)
    if os.geteuid() != 0:
        return "mounting GlusterFS, MooseFS and sshfs here needs root"
    return None


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise SetupError(f"{', '.join(missing)} not installed: run scripts/setup.sh "
                         "(it installs the GlusterFS, MooseFS and sshfs packages)")


def run(cmd: Sequence[str], *, timeout: float = 60.0, check: bool = True,
        netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; SetupError with its output if it fails."""
    argv = [*(nsenter(netns)), *cmd]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from None
    if check and r.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed ({r.returncode}): "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r


def nsenter(netns: str | None) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}"] if netns else []


def wait_until(cond: Any, timeout: float, what: str, *, interval: float = 0.05) -> None:
    if not wait_for(cond, timeout, interval):
        raise SetupError(f"{what} (waited {timeout:.0f} s)")


def mounted(path: Path) -> str | None:
    """The fs type mounted exactly at ``path``, or None."""
    return next((m.fstype for m in mounts() if m.mountpoint == str(path)), None)


def mounts_under(prefix: str) -> list[str]:
    """Mount points below ``prefix``, deepest first (the order to unmount)."""
    return sorted((m.mountpoint for m in mounts() if m.mountpoint.startswith(prefix)),
                  key=len, reverse=True)


def _alive(pid: int, marker: str) -> bool:
    """Is ``pid`` alive and still the process we started (its command line
    names ``marker``)?  Guards against killing a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return marker.encode() in cmdline


def _kill(pid: int, marker: str, sig: int = signal.SIGKILL) -> None:
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def unmount(path: Path, *, timeout: float = 20.0) -> None:
    """Unmount a FUSE mount; lazily if it is busy or hung."""
    if mounted(path) is None:
        return
    try:
        r = subprocess.run(["umount", str(path)], capture_output=True, timeout=timeout,
                           check=False)
        if r.returncode == 0:
            return
    except subprocess.TimeoutExpired:
        pass
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=timeout,
                   check=False)


# -- the state file: what a pool made, so a later one can undo it ---------------------------


@dataclass
class State:
    path: Path
    pids: dict[str, int] = field(default_factory=dict)  # label -> pid
    mounts: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    mfs_configs: list[str] = field(default_factory=list)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in self.__dict__.items() if k != "path"}))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        st = cls(path)
        for k, v in data.items():
            if hasattr(st, k):
                setattr(st, k, v)
        return st


def undo(state: State, base: Path) -> list[str]:
    """Undo everything ``state`` records; returns what could not be undone."""
    problems: list[str] = []
    marker = str(base)
    for mp in sorted(set(state.mounts) | set(mounts_under(marker + "/")), key=len,
                     reverse=True):
        unmount(Path(mp))
    # Mount daemons first (their mounts are gone), then the servers.
    order = sorted(state.pids.items(), key=lambda kv: not kv[0].startswith("client"))
    for label, pid in order:
        if label == "glusterd":
            continue
        _kill(pid, marker if label != "glusterd" else "glusterd")
    for vol in state.volumes:
        if shutil.which("gluster"):
            run(["gluster", "--mode=script", "volume", "stop", vol, "force"], check=False,
                timeout=60)
            run(["gluster", "--mode=script", "volume", "delete", vol], check=False, timeout=60)
    gd = state.pids.get("glusterd")
    if gd:
        _kill(gd, "glusterd", signal.SIGTERM)
        with contextlib.suppress(SetupError):
            wait_until(lambda: not _alive(gd, "glusterd"), 15, "glusterd did not stop")
        _kill(gd, "glusterd")
    for link in state.links:
        run(["ip", "link", "del", link], check=False, timeout=10)
    for ns in state.netns:
        run(["ip", "netns", "del", ns], check=False, timeout=10)
    left = mounts_under(marker + "/")
    if left:
        problems.append(f"still mounted: {', '.join(left)}")
    return problems


# -- the network -------------------------------------------------------------------------------


class Net:
    """A bridge with the servers' address, and a namespace per client host."""

    def __init__(self, state: State, tag: str) -> None:
        self.state = state
        self.tag = tag
        self.bridge = f"amsbr{tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.server_ip = ""
        self.hosts: dict[str, tuple[str, str]] = {}  # name -> (netns, address)
        self.namespaces = False

    def create(self) -> None:
        """Raise Unavailable if no link can be made here."""
        routes = run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
        subnet = next((s for s in SUBNETS if s.rsplit(".", 1)[0] + "." not in routes), None)
        if subnet is None:
            raise Unavailable(f"every candidate subnet ({', '.join(SUBNETS)}) is in use")
        self.subnet = ipaddress.ip_network(subnet)
        r = run(["ip", "link", "add", self.bridge, "type", "bridge"], check=False)
        if r.returncode != 0:
            raise Unavailable(f"cannot create a network link here (ip link add: "
                              f"{r.stderr.strip()})")
        self.state.links.append(self.bridge)
        self.state.save()
        self.server_ip = str(self.subnet.network_address + 1)
        run(["ip", "addr", "add", f"{self.server_ip}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        probe = f"ams-{self.tag}-probe"
        if run(["ip", "netns", "add", probe], check=False).returncode == 0:
            run(["ip", "netns", "del", probe], check=False)
            self.namespaces = True

    def add_host(self, name: str) -> tuple[str, str] | None:
        """A namespace for client ``name`` with its own address, or None."""
        if not self.namespaces:
            return None
        assert self.subnet is not None
        ns = f"ams-{self.tag}-{name}"
        outer, inner = f"amsv{self.tag}{name}"[:15], f"amsp{self.tag}{name}"[:15]
        ip = str(self.subnet.network_address + 10 + len(self.hosts) + 1)
        run(["ip", "netns", "add", ns])
        self.state.netns.append(ns)
        self.state.save()
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        self.state.links.append(outer)
        self.state.save()
        run(["ip", "link", "set", outer, "master", self.bridge])
        run(["ip", "link", "set", outer, "up"])
        run(["ip", "link", "set", inner, "netns", ns])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inner])
        run(["ip", "-n", ns, "link", "set", inner, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self.hosts[name] = (ns, ip)
        return ns, ip

    def cut(self, name: str) -> None:
        """Partition host ``name`` from everyone (its link goes down)."""
        run(["ip", "link", "set", f"amsv{self.tag}{name}"[:15], "down"])

    def heal(self, name: str) -> None:
        run(["ip", "link", "set", f"amsv{self.tag}{name}"[:15], "up"])


# -- filesystems ---------------------------------------------------------------------------------


class Cluster:
    """One filesystem: servers started by :meth:`start`, clients by :meth:`mount`."""

    kind = ""
    #: Do fcntl/flock locks exclude each other between two client mounts?
    fcntl_across_clients = True
    #: Does the filesystem need the bridge address (cannot use loopback)?
    needs_address = False
    programs: tuple[str, ...] = ()

    def __init__(self, base: Path, state: State, net: Net | None) -> None:
        self.base = base
        self.state = state
        self.net = net
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def server_ip(self) -> str:
        return self.net.server_ip if self.net and self.net.server_ip else "127.0.0.1"

    def start(self) -> None:
        raise NotImplementedError

    def mount_command(self, mountpoint: Path, netns: str | None) -> list[str]:
        raise NotImplementedError

    def fstype(self) -> str:
        raise NotImplementedError

    def spawn(self, label: str, cmd: Sequence[str], *, netns: str | None = None,
              ) -> subprocess.Popen[bytes]:
        log = self.base / "logs" / f"{label}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "ab") as out:
            p = subprocess.Popen([*nsenter(netns), *cmd], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=out, start_new_session=True)
        self.procs[label] = p
        self.state.pids[label] = p.pid
        self.state.save()
        return p

    def log_tail(self, label: str, lines: int = 5) -> str:
        try:
            text = (self.base / "logs" / f"{label}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " / ".join(text.strip().splitlines()[-lines:])

    def mount(self, name: str, netns: str | None) -> Path:
        mp = self.base / "mnt" / name
        mp.mkdir(parents=True, exist_ok=True)
        label = f"client-{name}"
        self.state.mounts.append(str(mp))
        p = self.spawn(label, self.mount_command(mp, netns), netns=netns)

        def ready() -> bool:
            if p.poll() is not None:
                raise SetupError(f"{self.kind} client {name} exited ({p.returncode}): "
                                 f"{self.log_tail(label)}")
            return (mounted(mp) or "").startswith("fuse")

        wait_until(ready, WAIT, f"{self.kind} client {name} did not mount")
        return mp

    def unmount(self, name: str) -> None:
        mp = self.base / "mnt" / name
        unmount(mp)
        p = self.procs.pop(f"client-{name}", None)
        if p is not None:
            _stop(p, 10)

    def stop(self) -> None:
        """Stop the servers (clients are unmounted first by the pool)."""
        for label in [k for k in self.procs if not k.startswith("client-")]:
            _stop(self.procs.pop(label), 20, signal.SIGTERM)


def _stop(p: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class LocalDir(Cluster):
    """No filesystem: every client is the same local directory (the baseline)."""

    kind = "local"

    def start(self) -> None:
        (self.base / "local").mkdir(exist_ok=True)

    def mount(self, name: str, netns: str | None) -> Path:
        return self.base / "local"

    def unmount(self, name: str) -> None:
        pass


class GlusterFS(Cluster):
    """A one-brick GlusterFS volume; ``strict`` turns the incoherent caches off."""

    programs = ("glusterd", "gluster", "glusterfs")

    def __init__(self, base: Path, state: State, net: Net | None, *, strict: bool) -> None:
        super().__init__(base, state, net)
        self.strict = strict
        self.kind = "glusterfs" if strict else "glusterfs-default"
        self.volume = f"{GLUSTER_VOLUME_PREFIX}{os.getpid()}{secrets.token_hex(2)}"

    def fstype(self) -> str:
        return "fuse.glusterfs"

    def start(self) -> None:
        if not _glusterd_running():
            self.spawn("glusterd", ["glusterd", "-N", "-p", str(self.base / "glusterd.pid"),
                                    "--log-file", str(self.base / "logs" / "glusterd.log")])
        wait_until(lambda: run(["gluster", "--mode=script", "volume", "list"], check=False,
                               timeout=20).returncode == 0,
                   WAIT, f"glusterd did not answer: {self.log_tail('glusterd')}")
        brick = self.base / "brick"
        brick.mkdir()
        host = self.net.server_ip if self.net and self.net.namespaces else socket.gethostname()
        self.state.volumes.append(self.volume)
        self.state.save()
        run(["gluster", "--mode=script", "volume", "create", self.volume, f"{host}:{brick}",
             "force"])
        if self.strict:
            opts = [x for o in GLUSTER_STRICT_OFF for x in (f"performance.{o}", "off")]
            run(["gluster", "--mode=script", "volume", "set", self.volume, *opts,
                 "performance.strict-o-direct", "on"])
        run(["gluster", "--mode=script", "volume", "start", self.volume])

    def mount_command(self, mountpoint: Path, netns: str | None) -> list[str]:
        server = self.server_ip if netns else socket.gethostname()
        return ["glusterfs", "-N", f"--volfile-server={server}",
                f"--volfile-id=/{self.volume}",
                f"--log-file={self.base / 'logs' / ('gfs-' + mountpoint.name + '.log')}",
                *(GLUSTER_MOUNT_STRICT if self.strict else ()), str(mountpoint)]

    def stop(self) -> None:
        run(["gluster", "--mode=script", "volume", "stop", self.volume, "force"], check=False)
        run(["gluster", "--mode=script", "volume", "delete", self.volume], check=False)
        with contextlib.suppress(ValueError):
            self.state.volumes.remove(self.volume)
        self.state.save()
        super().stop()


def _glusterd_running() -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm", "rb") as f:
                    if f.read().strip() == b"glusterd":
                        return True
            except OSError:
                continue
    return False


class MooseFS(Cluster):
    """An mfsmaster and one mfschunkserver on the bridge address; strict clients."""

    kind = "moosefs"
    needs_address = True
    programs = ("mfsmaster", "mfschunkserver", "mfsmount", "mfssetgoal")

    def fstype(self) -> str:
        return "fuse.mfs"

    def start(self) -> None:
        m = self.base / "mfs"
        for d in ("master", "cs", "chunks"):
            (m / d).mkdir(parents=True)
        shutil.copy("/var/lib/mfs/metadata.mfs.empty", m / "master" / "metadata.mfs")
        (m / "mfsexports.cfg").write_text("*\t/\trw,alldirs,maproot=0\n")
        (m / "mfstopology.cfg").write_text("")
        (m / "mfshdd.cfg").write_text(f"{m / 'chunks'}\n")
        ip = self.server_ip
        (m / "mfsmaster.cfg").write_text(
            f"WORKING_USER = mfs\nWORKING_GROUP = mfs\nDATA_PATH = {m / 'master'}\n"
            f"EXPORTS_FILENAME = {m / 'mfsexports.cfg'}\n"
            f"TOPOLOGY_FILENAME = {m / 'mfstopology.cfg'}\n"
            f"MATOML_LISTEN_HOST = {ip}\nMATOCS_LISTEN_HOST = {ip}\nMATOCL_LISTEN_HOST = {ip}\n"
)
        (m / "mfschunkserver.cfg").write_text(
            f"WORKING_USER = mfs\nWORKING_GROUP = mfs\nDATA_PATH = {m / 'cs'}\n"
            f"HDD_CONF_FILENAME = {m / 'mfshdd.cfg'}\nMASTER_HOST = {ip}\n"
            f"CSSERV_LISTEN_HOST = {ip}\nHDD_LEAVE_SPACE_DEFAULT = 256MiB\n")
        run(["chown", "-R", "mfs:mfs", str(m)])
        for p in (self.base, m):
            p.chmod(0o755)
        self.spawn("mfsmaster", ["mfsmaster", "-f", "-c", str(m / "mfsmaster.cfg"), "start"])
        wait_until(lambda: _listening(ip, 9421) or self._died("mfsmaster"), WAIT,
                   "mfsmaster did not listen")
        self.spawn("mfschunkserver", ["mfschunkserver", "-f", "-c",
                                      str(m / "mfschunkserver.cfg"), "start"])
        wait_until(lambda: _listening(ip, 9422) or self._died("mfschunkserver"), WAIT,
                   "mfschunkserver did not listen")

    def _died(self, label: str) -> bool:
        p = self.procs[label]
        if p.poll() is not None:
            raise SetupError(f"{label} exited ({p.returncode}): {self.log_tail(label)}")
        return False

    def mount_command(self, mountpoint: Path, netns: str | None) -> list[str]:
        return ["mfsmount", "-f", str(mountpoint), "-H", self.server_ip,
                "-o", MFS_MOUNT_STRICT]

    def mount(self, name: str, netns: str | None) -> Path:
        mp = super().mount(name, netns)
        if not self.state.mfs_configs:
            # One chunkserver: goal 1, or every chunk stays "undergoal".  Then
            # wait until the chunkserver has registered: a write succeeds.
            run(["mfssetgoal", "-r", "1", str(mp)], netns=netns)
            self.state.mfs_configs.append(str(mp))
            self.state.save()
            probe = mp / ".ams-distfs-probe"

            def writable() -> bool:
                try:
                    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        os.write(fd, b"x")
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    return False
                os.unlink(probe)
                return True

            wait_until(writable, WAIT, "MooseFS accepted no writes (no chunkserver?)",
                       interval=0.5)
        return mp


def _listening(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


class SSHFS(Cluster):
    """An sshd of our own, and sshfs clients with every cache off."""

    kind = "sshfs"
    fcntl_across_clients = False
    programs = ("sshd", "sshfs", "ssh-keygen")

    def fstype(self) -> str:
        return "fuse.sshfs"

    def start(self) -> None:
        s = self.base / "ssh"
        s.mkdir(mode=0o700)
        (self.base / "export").mkdir()
        for key in ("hostkey", "clientkey"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(s / key)])
        shutil.copy(s / "clientkey.pub", s / "authorized_keys")
        (s / "authorized_keys").chmod(0o600)
        ip = self.server_ip
        self.port = _free_port(ip)
        Path("/run/sshd").mkdir(exist_ok=True)
        (s / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {ip}\nHostKey {s / 'hostkey'}\n"
            f"PidFile {s / 'sshd.pid'}\nAuthorizedKeysFile {s / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\n")
        self.spawn("sshd", [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f",
                            str(s / "sshd_config")])
        wait_until(lambda: _listening(ip, self.port), WAIT,
                   f"sshd did not listen: {self.log_tail('sshd')}")

    def mount_command(self, mountpoint: Path, netns: str | None) -> list[str]:
        s = self.base / "ssh"
        return ["sshfs", "-f", "-p", str(self.port), "-o",
                f"IdentityFile={s / 'clientkey'},UserKnownHostsFile={s / 'known_hosts'},"
                f"StrictHostKeyChecking=no,{SSHFS_STRICT}",
                f"root@{self.server_ip}:{self.base / 'export'}", str(mountpoint)]

