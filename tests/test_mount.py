"""The mounted view: the tree model without FUSE, then ``ams mount`` on real FUSE mounts."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ams.cli import main as cli_main
from ams.config import Config, load_config
from ams.index import Index
from ams.mount import ROOT_INO, WATCH_FOR, Attr, Forget, FsError, MountTree, Owner, Touch
from ams.store import NewMessage, Store, UserRegistry
from bboard import Bboards
from delivery import deliver_main
from tests.mount_helpers import (
    crash,
    is_dead_mount,
    is_mounted,
    mounted,
    start_mount,
    stop,
    wait_for,
)
from tests.mx_helpers import add_users
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 65536
D1, D2, D3 = 1_700_000_000, 1_700_000_100, 1_700_000_200


def raw(subject: str, body: str = "hello") -> bytes:
    return (f"From: s@far.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@far.test>\r\n"
            f"\r\n{body}\r\n").encode()


def make_site(base: Path) -> tuple[Path, Config, Store]:
    path = base / "ams.toml"
    path.write_text(f'[store]\nroot = "{base / "store"}"\nfsync = "never"\n'
                    f'[host]\nname = "h1"\ncache_dir = "{base / "cache"}"\n'
                    '[mail]\ndomains = ["example.test"]\n'
                    f'[limits]\nmax_message_bytes = {LIMIT}\n')
    cfg = load_config(path)
    store = Store.initialise(cfg)
    users = add_users(store, "alice", "bob", "mod", "daemon")
    for name in ("Projects/AMS", "Lists", "Odd/7.eml"):
        users.mailboxes("alice").create(name)
    file(store, "alice", "INBOX", raw("first", "needle-one"), D1)
    file(store, "alice", "INBOX", raw("second", "needle-two"), D2)
    file(store, "alice", "Projects/AMS", raw("deep"), D3)
    for i in range(3):
        file(store, "alice", "Lists", raw(f"list-{i}"), D1 + i)
    boards = Bboards(store)
    boards.create("andrew.general")
    boards.create("cs.staff", post="members", members=["bob"])
    boards.create("org.announce", post="moderated", moderators=["mod"])
    boards.create("secret.list", read="list", readers=["bob"])
    return path, cfg, store


def file(store: Store, user: str, mailbox: str, message: bytes, date: int) -> int:
    (a,) = UserRegistry(store).mailboxes(user).open(mailbox).append(
        [NewMessage(message, internal_date=date)])
    return a.uid


def expunge(store: Store, user: str, mailbox: str, uids: list[int]) -> None:
    UserRegistry(store).mailboxes(user).open(mailbox).expunge(uids)


# -- the tree model, no FUSE -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture
def site(tmp_path: Path) -> tuple[Config, Store]:
    _, cfg, store = make_site(tmp_path)
    return cfg, store


@pytest.fixture
def index(site: tuple[Config, Store]) -> Iterator[Index]:
    ix = Index(site[0])
    yield ix
    ix.close()


def tree_for(site: tuple[Config, Store], index: Index, user: str | None,
             clock: Clock | None = None) -> MountTree:
    return MountTree(site[1], index, user=user, owner=Owner(1234, 5678),
                     clock=clock or Clock())


def walk(tree: MountTree, *names: str) -> Attr:
    attr = tree.getattr(ROOT_INO)
    for n in names:
        attr = tree.lookup(attr.ino, n.encode())
    return attr


def names(tree: MountTree, *path: str) -> list[str]:
    return [n.decode() for n, _ in tree.listdir(walk(tree, *path).ino)]


def refused(code: int, fn: object, *args: object) -> None:
    with pytest.raises(FsError) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.errno == code, e.value


def test_tree_shows_mailboxes_and_boards_as_files(site: tuple[Config, Store],
                                                  index: Index) -> None:
    tree = tree_for(site, index, "alice")
    assert names(tree) == ["bboards", "mail"]
    assert names(tree, "mail") == ["alice"]
    assert names(tree, "mail", "alice") == ["Archive", "Drafts", "INBOX", "Junk", "Lists",
                                            "Projects", "Sent", "Trash"]  # no "Odd/7.eml"
    assert names(tree, "mail", "alice", "Projects") == ["AMS"]
    assert names(tree, "mail", "alice", "Projects", "AMS") == ["1.eml"]
    assert names(tree, "mail", "alice", "INBOX") == ["1.eml", "2.eml"]
    msg = walk(tree, "mail", "alice", "INBOX", "2.eml")
    body = raw("second", "needle-two")
    assert (msg.mode, msg.size, msg.mtime_ns) == (stat.S_IFREG | 0o444, len(body), D2 * 10**9)
    assert (msg.uid, msg.gid, msg.ino >> 32 > 0) == (1234, 5678, True)
    assert walk(tree, "mail", "alice", "INBOX", "2.eml").ino == msg.ino  # stable
    assert walk(tree, "mail", "alice").mode == stat.S_IFDIR | 0o555
    refused(errno.ENOENT, walk, tree, "mail", "alice", "INBOX", "3.eml")
    refused(errno.ENOENT, walk, tree, "mail", "bob")
    fh = tree.open(msg.ino, write=False)
    assert tree.read(fh, 0, 1 << 20) == body
    assert tree.read(fh, 7, 5) == body[7:12]
    assert tree.read(fh, len(body), 10) == b""
    tree.release(fh)
    refused(errno.EACCES, lambda: tree.open(msg.ino, write=True))
    # Boards alice may read; the directory is writable where she may post.
    assert names(tree, "bboards") == ["andrew.general", "cs.staff", "org.announce"]
    modes = {n: walk(tree, "bboards", n).mode & 0o777 for n in names(tree, "bboards")}
    assert modes == {"andrew.general": 0o755, "cs.staff": 0o555, "org.announce": 0o755}
    refused(errno.ENOENT, walk, tree, "bboards", "secret.list")


def test_tree_follows_the_log_and_says_what_to_forget(site: tuple[Config, Store],
                                                      index: Index) -> None:
    store = site[1]
    clock = Clock()
    tree = tree_for(site, index, "alice", clock)
    inbox = walk(tree, "mail", "alice", "INBOX")
    one = walk(tree, "mail", "alice", "INBOX", "1.eml")
    (folder,) = tree.take_activated()
    assert tree.watch_left(folder) == pytest.approx(WATCH_FOR)
    tree.take_invalidations()
    file(store, "alice", "INBOX", raw("third"), D3)
    refused(errno.ENOENT, walk, tree, "mail", "alice", "INBOX", "3.eml")  # trusted FRESH s
    clock.tick()
    assert walk(tree, "mail", "alice", "INBOX", "3.eml").size == len(raw("third"))
    assert tree.take_invalidations() == [Touch(inbox.ino)]
    expunge(store, "alice", "INBOX", [1])
    tree.refresh(folder, force=True)  # as the driver does when the watcher sees the log grow
    assert tree.take_invalidations() == [Forget(inbox.ino, b"1.eml", one.ino), Touch(inbox.ino)]
    assert names(tree, "mail", "alice", "INBOX") == ["2.eml", "3.eml"]
    refused(errno.ENOENT, tree.getattr, one.ino)
    # Once the kernel's caches have run out, the folder needs no watch; the
    # next question about it starts one again.
    clock.tick(WATCH_FOR + 1)
    assert tree.watch_left(folder) < 0
    walk(tree, "mail", "alice", "INBOX", "2.eml")
    assert tree.take_activated() == [folder]


def test_tree_mailbox_rename_drops_the_old_directory(site: tuple[Config, Store],
                                                     index: Index) -> None:
    clock = Clock()
    tree = tree_for(site, index, "alice", clock)
    alice = walk(tree, "mail", "alice")
    projects = walk(tree, "mail", "alice", "Projects")
    deep = walk(tree, "mail", "alice", "Projects", "AMS", "1.eml")
    tree.take_invalidations()
    UserRegistry(site[1]).mailboxes("alice").rename("Projects/AMS", "Old/AMS")
    clock.tick()
    tree.refresh_lists()
    assert Forget(alice.ino, b"Projects", projects.ino) in tree.take_invalidations()
    assert "Old" in names(tree, "mail", "alice") and "Projects" not in names(tree, "mail", "alice")
    assert walk(tree, "mail", "alice", "Old", "AMS", "1.eml").ino == deep.ino  # same log


def test_tree_posts_a_file_when_it_is_closed(site: tuple[Config, Store],
                                             index: Index) -> None:
    boards = Bboards(site[1])
    tree = tree_for(site, index, "alice")
    general = walk(tree, "bboards", "andrew.general")
    fh, attr = tree.create(general.ino, b"hello.eml")
    assert attr.mode == stat.S_IFREG | 0o644 and attr.entry_ttl == 0
    assert names(tree, "bboards", "andrew.general") == ["hello.eml"]
    body = raw("posted", "by a file")
    assert tree.write(fh, 0, body[:10]) == 10
    tree.write(fh, 10, body[10:])
    tree.flush(fh)
    tree.flush(fh)  # a second close of a dup'd descriptor posts nothing more
    tree.release(fh)
    (post,) = boards.posts("andrew.general")
    assert boards.read("andrew.general", post) == body
    assert names(tree, "bboards", "andrew.general") == ["1.eml"]
    # An empty file posts nothing and is no error (touch).
    fh, _ = tree.create(general.ino, b"empty.eml")
    tree.flush(fh)
    tree.release(fh)
    assert len(boards.posts("andrew.general")) == 1
    # Moderated: the post waits for a moderator and leaves no file behind.
    announce = walk(tree, "bboards", "org.announce")
    fh, _ = tree.create(announce.ino, b"news.eml")
    tree.write(fh, 0, raw("news"))
    tree.flush(fh)
    tree.release(fh)
    assert [p.subject for p in boards.pending("org.announce")] == ["news"]
    assert names(tree, "bboards", "org.announce") == []


def test_tree_refuses_posts_at_create_and_at_close(site: tuple[Config, Store],
                                                   index: Index) -> None:
    boards = Bboards(site[1])
    tree = tree_for(site, index, "alice")
    staff = walk(tree, "bboards", "cs.staff")
    inbox = walk(tree, "mail", "alice", "INBOX")
    general = walk(tree, "bboards", "andrew.general")
    refused(errno.EACCES, tree.create, staff.ino, b"x.eml")  # members only
    refused(errno.EACCES, tree.create, inbox.ino, b"x.eml")  # mail is read-only
    refused(errno.EACCES, tree.setattr, walk(tree, "mail", "alice", "INBOX", "1.eml").ino, 0)
    # The policy is the one in force at close: a refusal then is close's error.
    fh, _ = tree.create(general.ino, b"late.eml")
    tree.write(fh, 0, raw("late"))
    boards.update("andrew.general", post="members", add_members=["bob"])
    refused(errno.EACCES, tree.flush, fh)
    tree.release(fh)
    assert boards.posts("andrew.general") == []
    assert names(tree, "bboards", "andrew.general") == []
    boards.update("andrew.general", post="open")
    fh, _ = tree.create(general.ino, b"junk.eml")
    tree.write(fh, 0, b"not a message\n")
    refused(errno.EINVAL, tree.flush, fh)
    tree.release(fh)
    fh, _ = tree.create(general.ino, b"big.eml")
    refused(errno.EFBIG, tree.write, fh, LIMIT - 2, b"four")
    tree.release(fh)
    assert boards.posts("andrew.general") == []
    # A mount of everything has no user to post as.
    everyone = tree_for(site, index, None)
    refused(errno.EACCES, everyone.create, walk(everyone, "bboards", "andrew.general").ino,
            b"x.eml")


def test_tree_of_everyone_owns_mail_by_unix_account(site: tuple[Config, Store],
                                                    index: Index) -> None:
    tree = tree_for(site, index, None)
    assert names(tree, "mail") == ["alice", "bob", "daemon", "mod"]
    daemon = pwd.getpwnam("daemon")
    d = walk(tree, "mail", "daemon")
    assert (d.mode, d.uid, d.gid) == (stat.S_IFDIR | 0o500, daemon.pw_uid, daemon.pw_gid)
    a = walk(tree, "mail", "alice", "INBOX", "1.eml")
    assert (a.mode, a.uid) == (stat.S_IFREG | 0o400, 0)  # no Unix account alice: root's
    assert walk(tree, "mail").mode & 0o777 == 0o711
    assert walk(tree, "bboards", "secret.list").mode & 0o777 == 0o500
    assert walk(tree, "bboards", "andrew.general").mode & 0o777 == 0o555


# -- ams mount, on real FUSE mounts ---------------------------------------------------------


class Site:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config_path, self.config, self.store = make_site(base)
        self.mp = base / "mp"
        self.mp.mkdir()
        self.log = base / "mount.log"

    def ams(self, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ams.cli", "--config",
                               str(self.config_path), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=WAIT, user=user,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})


def sh(*cmd: str | Path, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=WAIT,
                          user=user)


def cat(path: Path, user: int | None = None) -> bytes:
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=WAIT, user=user)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def alice_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("mount"))
    proc = start_mount(s.config_path, s.mp, "--user", "alice", log=s.log)
    try:
        yield s
    finally:
        rc = stop(proc, s.mp)
    assert rc == 0, s.log.read_text()


def test_mount_ls_stat_cat_grep_find_cp(alice_mount: Site) -> None:
    s = alice_mount
    inbox = s.mp / "mail" / "alice" / "INBOX"
    assert sh("ls", s.mp / "mail" / "alice").stdout.split() == [
        "Archive", "Drafts", "INBOX", "Junk", "Lists", "Projects", "Sent", "Trash"]
    assert sh("ls", inbox).stdout.split() == ["1.eml", "2.eml"]
    out = sh("stat", "-c", "%s %Y %a %u %F", inbox / "2.eml").stdout.split()
    assert out == [str(len(raw("second", "needle-two"))), str(D2), "444", str(os.getuid()),
                   "regular", "file"]
    assert cat(inbox / "1.eml") == raw("first", "needle-one")
    grep = sh("grep", "-rl", "needle-two", s.mp / "mail")
    assert grep.returncode == 0 and grep.stdout.split() == [str(inbox / "2.eml")]
    found = sh("find", s.mp, "-name", "*.eml").stdout.split()
    rel = sorted(str(Path(f).relative_to(s.mp)) for f in found)
    assert rel == ["mail/alice/INBOX/1.eml", "mail/alice/INBOX/2.eml",
                   "mail/alice/Lists/1.eml", "mail/alice/Lists/2.eml",
                   "mail/alice/Lists/3.eml", "mail/alice/Projects/AMS/1.eml"]
    out_dir = s.base / "copied"
    out_dir.mkdir()
    assert sh("cp", "-r", s.mp / "mail" / "alice" / "Projects", out_dir).returncode == 0
    assert (out_dir / "Projects" / "AMS" / "1.eml").read_bytes() == raw("deep")
    assert sh("ls", s.mp / "bboards").stdout.split() == [
        "andrew.general", "cs.staff", "org.announce"]


def test_mount_shows_a_new_delivery_within_two_seconds(alice_mount: Site) -> None:
    s = alice_mount
    inbox = s.mp / "mail" / "alice" / "INBOX"
    before = set(os.listdir(inbox))
    message = raw("fresh", "just delivered")
    assert deliver_main(s.config, ["alice@example.test"], "s@far.test", message) == 0
    took = wait_for(lambda: len(os.listdir(inbox)) > len(before), 2.0)
    assert took is not None and took < 2.0
    (new,) = set(os.listdir(inbox)) - before
    assert (inbox / new).read_bytes().endswith(message)


def test_mount_forgets_an_expunged_message_within_two_seconds(alice_mount: Site) -> None:
    s = alice_mount
    gone = s.mp / "mail" / "alice" / "Lists" / "1.eml"
    assert gone.stat().st_size == len(raw("list-0"))  # the kernel now caches the name
    expunge(s.store, "alice", "Lists", [1])
    took = wait_for(lambda: not gone.exists(), 2.0)
    assert took is not None and took < 2.0
    assert sorted(os.listdir(gone.parent)) == ["2.eml", "3.eml"]


def test_mount_posts_by_cp(alice_mount: Site) -> None:
    s = alice_mount
    boards = Bboards(s.store)
    src = s.base / "post.eml"
    src.write_bytes(raw("by-cp", "posted with cp"))
    general = s.mp / "bboards" / "andrew.general"
    r = sh("cp", src, general / "mine.eml")
    assert r.returncode == 0, r.stderr
    (post,) = boards.posts("andrew.general")
    assert boards.read("andrew.general", post) == src.read_bytes()
    assert os.listdir(general) == [f"{post.uid}.eml"]  # the temporary name is gone
    assert (general / f"{post.uid}.eml").read_bytes() == src.read_bytes()
    # Moderated: cp succeeds, the post waits for a moderator, no file stays.
    assert sh("cp", src, s.mp / "bboards" / "org.announce").returncode == 0
    assert [p.subject for p in boards.pending("org.announce")] == ["by-cp"]
    assert os.listdir(s.mp / "bboards" / "org.announce") == []


def test_mount_refusals(alice_mount: Site) -> None:
    s = alice_mount
    boards = Bboards(s.store)
    src = s.base / "refused.eml"
    src.write_bytes(raw("refused"))
    r = sh("cp", src, s.mp / "bboards" / "cs.staff")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = sh("cp", src, s.mp / "mail" / "alice" / "INBOX")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = sh("rm", "-f", s.mp / "mail" / "alice" / "INBOX" / "1.eml")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = sh("mkdir", s.mp / "mail" / "alice" / "New")
    assert r.returncode != 0
    assert not (s.mp / "bboards" / "secret.list").exists()
    # A refusal at close: the board closed to alice after she opened the file.
    before = len(boards.posts("andrew.general"))
    boards.create("late.board")
    target = s.mp / "bboards" / "late.board" / "late.eml"
    assert wait_for(target.parent.exists, 2.0) is not None
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, raw("late"))
        boards.update("late.board", post="members", add_members=["bob"])
    finally:
        with pytest.raises(PermissionError):
            os.close(fd)
    assert boards.posts("late.board") == []
    assert os.listdir(target.parent) == []
    general = s.mp / "bboards" / "andrew.general"
    fd = os.open(general / "big.eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"x" * (LIMIT + 1))
        assert e.value.errno == errno.EFBIG
    finally:
        os.close(fd)  # nothing written: nothing to post
    fd = os.open(general / "junk.eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"no header here\n")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    assert len(boards.posts("andrew.general")) == before


def test_mount_cleans_up_a_crashed_mount_and_unmounts_on_sigterm(tmp_path: Path) -> None:
    s = Site(tmp_path)
    # SIGKILL leaves a dead mount behind, for the next ams mount to find.
    proc = start_mount(s.config_path, s.mp, "--user", "bob", log=s.log)
    crash(proc)
    assert is_mounted(s.mp) and is_dead_mount(s.mp)
    proc = start_mount(s.config_path, s.mp, "--user", "bob", log=s.log)
    try:
        assert os.listdir(s.mp / "mail") == ["bob"]
        assert "a crashed mount is still there" in s.log.read_text()
    finally:
        rc = stop(proc, s.mp)
    assert rc == 0 and not is_mounted(s.mp)


def test_mount_of_everyone_by_root(tmp_path: Path) -> None:
    s = Site(tmp_path)
    Bboards(s.store).post("andrew.general", raw("public"), user="bob")
    # Other users must be able to reach the mount point (allow_other).
    shared = Path(tempfile.mkdtemp(prefix="ams-mount-"))
    shared.chmod(0o755)
    mp = shared / "mp"
    mp.mkdir()
    nobody = pwd.getpwnam("nobody").pw_uid
    daemon = pwd.getpwnam("daemon").pw_uid
    try:
        with mounted(s.config_path, mp, log=s.log):
            assert sorted(os.listdir(mp / "mail")) == ["alice", "bob", "daemon", "mod"]
            assert cat(mp / "mail" / "alice" / "INBOX" / "1.eml") == raw("first", "needle-one")
            r = sh("ls", mp / "mail" / "alice", user=nobody)
            assert r.returncode != 0 and "Permission denied" in r.stderr
            assert sh("ls", mp / "mail" / "daemon", user=daemon).returncode == 0
            assert cat(mp / "bboards" / "andrew.general" / "1.eml", user=nobody) == raw("public")
            src = s.base / "p.eml"
            src.write_bytes(raw("as-root"))
            r = sh("cp", src, mp / "bboards" / "andrew.general")
            assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_mount_command_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    s = Site(tmp_path)
    r = s.ams("mount", str(tmp_path / "nowhere"), "--user", "alice")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"ams: mount point {tmp_path / 'nowhere'} does not exist")
    r = s.ams("mount", str(s.mp), "--user", "nosuch")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "nosuch" in r.stderr
    assert not is_mounted(s.mp)
    # As another Unix user (nobody): only their own mail, never everyone's.
    nobody = pwd.getpwnam("nobody").pw_uid
    monkeypatch.setattr(os, "geteuid", lambda: nobody)
    monkeypatch.setattr(os, "getuid", lambda: nobody)
    conf = str(s.config_path)
    assert cli_main(["mount", str(s.mp), "--config", conf]) == 2
    assert capsys.readouterr().err == (
        "ams: only root may mount every user's mail; give --user NAME\n")
    assert cli_main(["mount", str(s.mp), "--config", conf, "--user", "alice"]) == 2
    assert capsys.readouterr().err == (
        "ams: only root may mount another user's mail (you are nobody, not alice)\n")
    assert not is_mounted(s.mp)
