"""``ams doctor``: real runs on a local disk and on FUSE mounts that break
what the store relies on, the rendezvous, the verdict, the start-up guard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ams.cli import main
from ams.config import config_from_dict
from ams.doctor import (
    ALL_CHECKS,
    CROSS_HOST_CHECKS,
    SINGLE_HOST_CHECKS,
    UnsafeFilesystem,
    decide,
    judge_all,
    read_verdict,
    startup_check,
)
from ams.doctor._rendezvous import Aborted, Board, Rendezvous, Roster, Session, State
from ams.doctor._verdict import granularity_ns, judge_counter, judge_visibility
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
AMS = [sys.executable, "-m", "ams.cli"]
FUSE = Path(__file__).with_name("fuse_passthrough.py")


def doctor(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*AMS, "doctor", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"ams doctor did not finish in {timeout} s: {err[-2000:]}")
    return p.returncode, out, err


def pair(root_a: Path, root_b: Path, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run doctor as hosts a and b at once; both reports (JSON)."""
    pa = doctor("--root", str(root_a), "--host", "a", "--json", *extra)
    pb = doctor("--root", str(root_b), "--host", "b", "--json", *extra)
    (ca, oa, ea), (cb, ob, eb) = finish(pa), finish(pb)
    assert "Traceback" not in ea + eb, ea + eb
    assert oa and ob, (ca, cb, ea, eb)
    ra, rb = json.loads(oa), json.loads(ob)
    assert ca == ra_exit(ra) and cb == ra_exit(rb), (ca, cb, ea, eb)
    return ra, rb


def ra_exit(r: dict[str, Any]) -> int:
    return {"safe": 0, "unsafe": 1, "incomplete": 3}[r["verdict"]]


def by_name(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in r["checks"]}


def leftovers(root: Path) -> set[str]:
    return set(os.listdir(root / "doctor")) - {"verdicts"}


def one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ams: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# -- the command on a local disk ----------------------------------------------------------


def test_two_hosts_on_a_local_disk_agree_on_fcntl(tmp_path: Path) -> None:
    ra, rb = pair(tmp_path, tmp_path, "--rounds", "30")
    for r in (ra, rb):
        assert r["verdict"] == "safe" and r["scope"] == "cross-host"
        assert r["lock_method"] == "fcntl" and r["settings"]["lock_method"] == "fcntl"
        assert [c["name"] for c in r["checks"]] == list(ALL_CHECKS)
        bad = {c["name"]: c["detail"] for c in r["checks"] if c["status"] not in ("ok", "warn")}
        assert not bad, bad
        assert sorted(p["host"] for p in r["peers"]) == ["a", "b"]
    assert [c["status"] for c in ra["checks"]] == [c["status"] for c in rb["checks"]]
    checks = by_name(ra)
    assert checks["rename_race"]["one_winner"] == 30
    assert checks["fcntl_counter"]["lost"] == 0 and checks["fcntl_counter"]["expected"] == 60
    assert checks["vis_append_fstat"]["immediate"] == checks["vis_append_fstat"]["trials"] > 0
    assert leftovers(tmp_path) == set()
    for host in ("a", "b"):
        v = read_verdict(tmp_path, host)
        assert v is not None and v["verdict"] == "safe" and sorted(v["peers"]) == ["a", "b"]


def test_single_host_run_skips_the_cross_host_checks(tmp_path: Path) -> None:
    code, out, err = finish(doctor("--root", str(tmp_path), "--peers", "0", "--host", "solo"))
    assert code == 0, err
    assert "for this host alone" in out and 'lock_method = "fcntl"' in out
    for name in SINGLE_HOST_CHECKS:
        assert any(ln.startswith("ok") and f" {name} " in ln for ln in out.splitlines()), out
    for name in CROSS_HOST_CHECKS:
        assert any(ln.startswith("skip") and f" {name} " in ln for ln in out.splitlines()), out
    assert leftovers(tmp_path) == set()
    assert read_verdict(tmp_path, "solo")["scope"] == "single-host"  # type: ignore[index]


def test_a_peer_that_never_comes_is_incomplete(tmp_path: Path) -> None:
    t0 = time.monotonic()
    code, out, err = finish(doctor("--root", str(tmp_path), "--peers", "1", "--wait", "2"))
    assert code == 3 and out == ""
    one_line(err, "no peer joined within 2 s")
    assert 2 <= time.monotonic() - t0 < 30
    assert leftovers(tmp_path) == set()  # neither lead nor run directory stays behind
    code, out, err = finish(doctor("--root", str(tmp_path), "--wait", "1", "--json"))
    assert code == 3 and json.loads(out)["verdict"] == "incomplete"


@pytest.mark.parametrize("args, needle", [
    (["--root", "/nonexistent/doctor-root"], "is not a directory"),
    (["--root", ".", "--peers", "-1"], "--peers"),
    (["--root", ".", "--rounds", "0"], "--rounds"),
    (["--root", ".", "--wait", "0"], "--wait"),
    (["--config", "/nonexistent/ams.toml"], "no config file"),
])
def test_bad_arguments_are_one_line(args: list[str], needle: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    one_line(err, needle)


def test_interrupted_run_ends_on_both_hosts_and_cleans_up(tmp_path: Path) -> None:
    lead = doctor("--root", str(tmp_path), "--host", "a", "--rounds", "3000", "--wait", "60")
    assert wait_for(lambda: (tmp_path / "doctor" / "lead").exists(), 30)
    follower = doctor("--root", str(tmp_path), "--host", "b", "--rounds", "3000")
    try:
        assert wait_for(lambda: (tmp_path / "doctor").is_dir() and any(
            (tmp_path / "doctor" / d / "roster").exists() for d in leftovers(tmp_path)), 60)
        follower.send_signal(signal.SIGTERM)
        code_b, _, err_b = finish(follower, 60)
        code_a, _, err_a = finish(lead, 60)
    finally:
        for p in (lead, follower):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert code_b == 130, err_b
    assert code_a == 3
    assert "b stopped the run: interrupted" in err_a.strip().splitlines()[-1]
    assert leftovers(tmp_path) == set()


def test_interrupted_while_waiting_removes_the_lead(tmp_path: Path) -> None:
    p = doctor("--root", str(tmp_path), "--wait", "60")
    try:
        assert wait_for(lambda: (tmp_path / "doctor" / "lead").exists(), 30)
        p.send_signal(signal.SIGINT)
        code, _, err = finish(p, 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert code == 130
    one_line(err, "interrupted")
    assert leftovers(tmp_path) == set()


# -- FUSE mounts that break the contract ---------------------------------------------------


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, Path]]]:
    """Two client mounts of one backing directory (tests/fuse_passthrough.py)."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3")
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def make(*opts: str) -> tuple[Path, Path]:
        backing = tmp_path / "backing"
        backing.mkdir()
        out = []
        for name in ("ma", "mb"):
            mp = tmp_path / name
            mp.mkdir()
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as f:
                p = subprocess.Popen([sys.executable, str(FUSE), str(backing), str(mp), *opts],
                                     stdout=subprocess.DEVNULL, stderr=f)
            started.append((p, mp))
            assert wait_for(lambda mp=mp, p=p: os.path.ismount(mp) or p.poll() is not None, 30)
            assert p.poll() is None, log.read_text()
            out.append(mp)
        return out[0], out[1]

    yield make
    for p, mp in started:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, timeout=30)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _config(root: Path, host: str, method: str) -> Any:
    return config_from_dict({"store": {"root": str(root), "lock_method": method},
                             "host": {"name": host, "cache_dir": "/nonexistent"}})


def test_locks_that_do_not_exclude_between_mounts_recommend_dotlock(
        mounts: Callable[..., tuple[Path, Path]]) -> None:
    ma, mb = mounts()
    with pytest.raises(UnsafeFilesystem, match="no ams doctor verdict for host a"):
        startup_check(_config(ma, "a", "dotlock"))
    ra, rb = pair(ma, mb, "--rounds", "20")
    for r in (ra, rb):
        checks = by_name(r)
        assert r["verdict"] == "safe" and r["lock_method"] == "dotlock", r["reasons"]
        assert checks["fcntl_exclusion"]["status"] == "fail"
        assert "a got it while b held it" in checks["fcntl_exclusion"]["detail"]
        assert checks["fcntl_local"]["status"] == "ok"  # one mount does exclude
        assert checks["dotlock_counter"]["status"] == "ok"
        assert checks["excl_race"]["status"] == "ok"
        assert r["filesystem"]["fstype"] == "fuse.passthrough"
    with pytest.raises(UnsafeFilesystem, match='lock_method = "dotlock" on every host'):
        startup_check(_config(ma, "a", "fcntl"))
    assert startup_check(_config(mb, "b", "dotlock")).verdict["lock_method"] == "dotlock"
    # A verdict is for the mount that measured it: host b's is not host a's.
    with pytest.raises(UnsafeFilesystem, match="no ams doctor verdict for host c"):
        startup_check(_config(ma, "c", "dotlock"))


def test_stale_attributes_between_mounts_are_unsafe(
        mounts: Callable[..., tuple[Path, Path]]) -> None:
    ma, mb = mounts("--stat-cache", "0.3")
    ra, rb = pair(ma, mb, "--rounds", "10")
    for r in (ra, rb):
        checks = by_name(r)
        assert r["verdict"] == "unsafe" and r["lock_method"] is None
        for name in ("vis_append_reopen", "vis_append_fstat"):
            assert checks[name]["status"] == "fail", checks[name]
            assert 0 < checks[name]["max_ms"] < 5000
        assert checks["vis_new_file"]["status"] == "ok"
        assert checks["rename_race"]["status"] == "ok"
    with pytest.raises(UnsafeFilesystem, match="unsafe for AMS"):
        startup_check(_config(ma, "a", "dotlock"))


# -- the rendezvous -------------------------------------------------------------------------


def _step_all(rvs: list[Rendezvous], limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while any(r.state not in (State.READY, State.GAVE_UP) for r in rvs):
        assert time.monotonic() < deadline, [r.state for r in rvs]
        for r in rvs:
            r.step(time.time())


def test_three_hosts_meet_and_agree_on_one_roster(tmp_path: Path) -> None:
    board = Board(tmp_path / "doctor")
    board.dir.mkdir()
    prepared: list[Path] = []
    rvs = [Rendezvous(board, host=h, peers=2, wait=10, rounds=7, now=time.time(),
                      prepare=prepared.append) for h in ("x", "y", "z")]
    _step_all(rvs)
    assert [r.state for r in rvs] == [State.READY] * 3
    rosters = [r.roster for r in rvs]
    assert len({r.run for r in rosters if r}) == 1 and len(prepared) == 1
    assert sorted(r.me for r in rosters if r) == [0, 1, 2]
    assert all(r.roster and r.roster.rounds == 7 for r in rvs)
    assert not board.lead.exists()  # a full run gives up the lead
    assert [d for d in os.listdir(board.dir) if d.startswith("run-")] == [rosters[0].run]


def test_a_late_host_finds_the_run_full_and_starts_its_own(tmp_path: Path) -> None:
    board = Board(tmp_path / "doctor")
    board.dir.mkdir()
    t = time.time()
    x, y = (Rendezvous(board, host=h, peers=1, wait=10, rounds=1, now=t) for h in "xy")
    late = Rendezvous(board, host="z", peers=1, wait=0.5, rounds=1, now=t)
    x.step(t)
    assert y.step(t) is State.JOINING and late.step(t) is State.JOINING
    assert y.step(t) is State.WAITING
    assert late.step(t) is State.ELECTING  # the only slot is taken
    _step_all([x, y, late])
    assert x.state is y.state is State.READY and late.state is State.GAVE_UP
    assert x.roster and y.roster and x.roster.run == y.roster.run
    assert [d for d in os.listdir(board.dir) if d.startswith("run-")] == [x.roster.run]


def test_a_follower_leaving_before_the_start_makes_the_leader_start_over(
        tmp_path: Path) -> None:
    board = Board(tmp_path / "doctor")
    board.dir.mkdir()
    t = time.time()
    x = Rendezvous(board, host="x", peers=2, wait=10, rounds=1, now=t)
    y = Rendezvous(board, host="y", peers=1, wait=10, rounds=1, now=t)
    x.step(t)
    first = x.run
    y.step(t)
    assert y.step(t) is State.WAITING
    y.cancel()
    assert x.step(t) is State.ELECTING and not board.run_dir(first).exists()
    assert x.step(t) is State.LEADING and x.run != first


def test_an_abandoned_lead_is_broken(tmp_path: Path) -> None:
    board = Board(tmp_path / "doctor")
    board.dir.mkdir()
    board.create_lead({"run": "run-dead", "host": "gone", "peers": 1,
                       "expires": time.time() - 60})
    rv = Rendezvous(board, host="x", peers=1, wait=10, rounds=1, now=time.time(), skew=5)
    rv.step(time.time())
    assert rv.state is State.ELECTING and not board.lead.exists()
    rv.step(time.time())
    assert rv.state is State.LEADING and board.read_lead()[0]["host"] == "x"  # type: ignore[index]
    rv.cancel()
    assert not board.lead.exists() and os.listdir(board.dir) == []


def test_a_lone_leader_gives_up_and_cleans_up(tmp_path: Path) -> None:
    board = Board(tmp_path / "doctor")
    board.dir.mkdir()
    t = time.time()
    leader = Rendezvous(board, host="x", peers=1, wait=0.2, rounds=1, now=t)
    assert leader.step(t) is State.LEADING
    assert leader.step(t + 1) is State.GAVE_UP
    assert not board.lead.exists() and os.listdir(board.dir) == []


def test_a_silent_peer_is_given_up_on(tmp_path: Path) -> None:
    (tmp_path / "sync" / "s").mkdir(parents=True)
    roster = Roster("run-x", 0, [{"host": "a"}, {"host": "b"}], 1)
    sess = Session(tmp_path, roster, silence=1.0)
    t0 = time.monotonic()
    with pytest.raises(Aborted, match="b stopped answering"):
        sess.barrier("s", "go")
    assert 1.0 <= time.monotonic() - t0 < 10
    # A peer that keeps beating is waited for, however long it takes.
    other = Session(tmp_path, Roster("run-x", 1, roster.hosts, 1), silence=1.0)
    (tmp_path / "sync" / "s" / "late.1").touch()
    other.alive()  # nothing to report
    (tmp_path / "abort").write_text('{"host": "b", "reason": "testing"}')
    with pytest.raises(Aborted, match="b stopped the run: testing"):
        sess.wait("s", "never", [1])


# -- the verdict, from records of real runs -----------------------------------------------------

# Measured on two mounts of tests/fuse_passthrough.py with --stat-cache 0.3:
# attributes cached by the client daemon (GlusterFS's md-cache in miniature)
# and POSIX locks kept per mount (sshfs).
STALE_RUN: dict[str, list[Any]] = {
    "vis_append_fstat": [{"append_fstat": [[1, 282.1], [1, 247.5]]},
                         {"append_fstat": [[0, 253.9], [0, 226.5]]}],
    "vis_append_reopen": [{"append_reopen": [[1, 294.4], [1, 676.3]]},
                          {"append_reopen": [[0, 224.6], [0, 234.8]]}],
    "vis_new_file": [{"new_file": [[1, 0.0], [1, 0.0]]}, {"new_file": [[0, 0.0], [0, 0.0]]}],
    "fcntl_exclusion": [{"held": {"0": "ok"}, "tried": {"1": "ok"}, "handoff_ms": {"1": 0.0}},
                        {"held": {"1": "ok"}, "tried": {"0": "ok"}, "handoff_ms": {"0": 0.0}}],
    "fcntl_counter": [{"done": 20, "error": None, "seconds": 0.127, "final": 36},
                      {"done": 20, "error": None, "seconds": 0.105, "final": 36}],
    "dotlock_counter": [{"done": 20, "error": None, "seconds": 1.307, "final": 40},
                        {"done": 20, "error": None, "seconds": 0.317, "final": 40}],
    "log_append_fcntl": [
        {"done": 4, "error": None, "seconds": 0.268, "per_writer": [4, 2], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None},
        {"done": 4, "error": None, "seconds": 0.259, "per_writer": [4, 2], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None}],
}
LOCAL_OK = {"fsync": {"file": "ok", "fsync_ms": [0.3, 0.6], "fdatasync": "ok", "dir": "ok"},
            "excl_local": {"first": "ok", "second": "EEXIST"},
            "fcntl_local": {"hold": "ok", "child": "EAGAIN"},
            "mtime_granularity": {"samples_ns": [1795703789718582830, 1795703789732875789]},
            "clock_fs": {"samples": [[1795703789810012872, 1795703789822201231,
                                      1795703789816875786]]}}


def test_verdict_on_a_stale_run_is_unsafe_for_the_right_reasons() -> None:
    checks = judge_all({0: LOCAL_OK, 1: LOCAL_OK}, STALE_RUN, ["a", "b"], rounds=20,
                       deadline=10, clock_skew=5)
    status = {c.name: c.status for c in checks}
    assert status["vis_append_fstat"] == status["vis_append_reopen"] == "fail"
    assert status["fcntl_exclusion"] == status["fcntl_counter"] == "fail"
    assert status["log_append_fcntl"] == "fail"
    assert status["vis_new_file"] == status["dotlock_counter"] == "ok"
    assert status["o_append"] == "skipped"
    v = decide(checks, lease=30, skew=5, cross_host=True)
    assert v.verdict == "unsafe" and v.lock_method is None and v.methods_ok == ()
    assert any("4 of 40 increments" in r for r in v.reasons)
    # Without the stale appends, the same run recommends dotlock.
    coherent = {**STALE_RUN, "vis_append_fstat": STALE_RUN["vis_new_file"],
                "vis_append_reopen": STALE_RUN["vis_new_file"]}
    coherent = {k: [{k[4:]: r["new_file"]} for r in v] if k.startswith("vis_") else v
                for k, v in coherent.items()}
    checks = judge_all({0: LOCAL_OK, 1: LOCAL_OK}, coherent, ["a", "b"], rounds=20,
                       deadline=10, clock_skew=5)
    v = decide(checks, lease=30, skew=5, cross_host=True)
    assert v.verdict == "safe" and v.lock_method == "dotlock" and v.methods_ok == ("dotlock",)


# Measured on two sshfs mounts of one export with sshfs's default options
# (20 s directory cache, 1 s attribute cache, no cross-mount locks); the
# races' first 10 of 30 rounds.
SSHFS_DEFAULT_RUN: dict[str, list[Any]] = {
    "vis_new_name_listed": [{"new_name_listed": [[1, None], [1, "skipped"], [1, "skipped"]]},
                            {"new_name_listed": [[0, None], [0, "skipped"], [0, "skipped"]]}],
    "vis_append_fstat": [{"append_fstat": [[1, 995.6], [1, 987.1], [1, 978.6]]},
                         {"append_fstat": [[0, 993.0], [0, 983.6], [0, 1002.7]]}],
    "excl_race": [
        {"results": ["EPERM", "ok", "ok", "EEXIST", "ok", "EPERM", "ok", "EEXIST", "ok",
                     "EEXIST"],
         "contents": ["host 1", "host 0", "host 0", "", "host 0", "host 1", "host 0", "host 1",
                      "host 0", ""]},
        {"results": ["ok", "EEXIST", "EPERM", "ok", "EPERM", "ok", "EEXIST", "ok", "EPERM", "ok"],
         "contents": ["host 1", "", "host 0", "host 1", "host 0", "host 1", "", "host 1",
                      "host 0", "host 1"]}],
    "rename_race": [
        {"results": ["ENOENT"] * 7 + ["ok"] * 3,
         "final": ["101"] * 6 + ["001", "010", "010", "010"]},
        {"results": ["ok"] * 7 + ["ENOENT"] * 3,
         "final": ["001"] * 7 + ["110", "010", "010"]}],
}


def test_verdict_on_sshfs_defaults_is_unsafe() -> None:
    checks = {c.name: c for c in judge_all({0: LOCAL_OK, 1: LOCAL_OK}, SSHFS_DEFAULT_RUN,
                                           ["a", "b"], rounds=10, deadline=10, clock_skew=5)}
    listed = checks["vis_new_name_listed"]
    assert listed.status == "warn" and listed.figures["not_seen"] == 2
    assert checks["vis_append_fstat"].status == "fail"
    excl = checks["excl_race"]
    assert excl.status == "fail" and excl.figures["loser_errno"] == {"EPERM": 5, "EEXIST": 5}
    assert "looked different" in excl.detail and "EPERM" in excl.detail
    ren = checks["rename_race"]
    assert ren.status == "fail" and ren.figures["one_winner"] == 10
    assert ren.figures["views_wrong"] == 7  # the source still listed, or a target missing
    v = decide(list(checks.values()), lease=30, skew=5, cross_host=True)
    assert v.verdict == "unsafe" and v.lock_method is None


# Measured on two GlusterFS 10 client mounts of one volume with the default
# options (ams doctor --rounds 30): the logs really lost mail.
GLUSTER_DEFAULT_RUN: dict[str, list[Any]] = {
    "vis_append_fstat": [{"append_fstat": [[1, 981.9], [1, 1000.6], [1, 986.0]]},
                         {"append_fstat": [[0, 983.0], [0, 979.3], [0, 975.8]]}],
    "fcntl_counter": [{"done": 30, "error": None, "seconds": 0.304, "final": 30},
                      {"done": 30, "error": None, "seconds": 0.184, "final": 31}],
    "log_append_fcntl": [
        {"done": 6, "error": None, "seconds": 0.079, "per_writer": [6, 3], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None},
        {"done": 6, "error": None, "seconds": 0.06, "per_writer": [1, 6], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None}],
    "log_append_dotlock": [
        {"done": 6, "error": None, "seconds": 0.225, "per_writer": [6, 3], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None},
        {"done": 6, "error": None, "seconds": 0.886, "per_writer": [6, 3], "dups": 0, "bad": 0,
         "uids_in_order": True, "read_error": None}],
}


def test_verdict_on_glusterfs_defaults_is_unsafe() -> None:
    checks = {c.name: c for c in judge_all({0: LOCAL_OK, 1: LOCAL_OK}, GLUSTER_DEFAULT_RUN,
                                           ["a", "b"], rounds=30, deadline=10, clock_skew=5)}
    assert checks["vis_append_fstat"].figures["max_ms"] == 1000.6
    counter = checks["fcntl_counter"]
    assert counter.status == "fail" and "at least 29 of 60" in counter.detail
    for method in ("fcntl", "dotlock"):
        log = checks[f"log_append_{method}"]
        assert log.status == "fail" and log.rules_out == (method,)
        assert "expected [6, 6]" in log.detail
    v = decide(list(checks.values()), lease=30, skew=5, cross_host=True)
    assert v.verdict == "unsafe" and v.methods_ok == ()


def test_visibility_grading() -> None:
    late_listing = [{"new_name_listed": [[1, 21000.0]]}, {"new_name_listed": [[0, None]]}]
    c = judge_visibility("new_name_listed", late_listing, ["a", "b"], 10)
    assert c.status == "warn" and c.rules_out == () and c.figures["not_seen"] == 1
    c = judge_visibility("overwrite", [{"overwrite": [[1, 990.0]]}, {"overwrite": []}],
                         ["a", "b"], 10)
    assert c.status == "fail" and c.rules_out == ("dotlock",)
    c = judge_visibility("new_file", [{"new_file": [[1, "setup"]]}, {"new_file": []}],
                         ["a", "b"], 10)
    assert c.status == "fail" and c.rules_out == ("fcntl", "dotlock")


def test_counter_views_that_disagree_fail() -> None:
    raws = [{"done": 5, "error": None, "seconds": 0.1, "final": 10},
            {"done": 5, "error": None, "seconds": 0.1, "final": 9}]
    c = judge_counter("fcntl_counter", "fcntl", raws, ["a", "b"], 5)
    assert c.status == "fail" and "different final values" in c.detail


def test_clock_skew_beyond_the_setting_raises_it() -> None:
    local = {0: LOCAL_OK, 1: {**LOCAL_OK, "clock_fs": {"samples": [
        [10_000_000_000, 10_001_000_000, 18_000_000_000]]}}}
    checks = judge_all(local, None, ["a", "b"], rounds=1, deadline=10, clock_skew=5)
    clock = next(c for c in checks if c.name == "clock_fs")
    assert clock.status == "warn" and "set it to 17" in clock.detail
    v = decide(checks, lease=30, skew=5, cross_host=False)
    assert v.settings["clock_skew"] == 17 and v.settings["lease_seconds"] == 68
    assert granularity_ns([3_000_000_000, 5_000_000_000]) == 1_000_000_000
    assert granularity_ns([3_000_000_001]) == 1


def test_startup_check_on_a_local_disk(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "h1", "fcntl")
    got = startup_check(cfg)  # a local disk needs no verdict
    assert got.verdict is None and got.filesystem["fstype"] not in ("", None)
    vdir = tmp_path / "doctor" / "verdicts"
    vdir.mkdir(parents=True)
    record = {"format": 1, "verdict": "unsafe", "methods_ok": [], "lock_method": None,
              "reasons": ["fsync: fsync failed"], "filesystem": got.filesystem,
              "date": "then", "run": "run-x", "scope": "cross-host", "settings": {}}
    (vdir / "h1.json").write_text(json.dumps(record))
    with pytest.raises(UnsafeFilesystem, match="fsync failed"):
        startup_check(cfg)
    # A verdict measured on another mount does not apply, and says so.
    (vdir / "h1.json").write_text(json.dumps({**record, "filesystem": {"fstype": "nfs4"}}))
    got = startup_check(cfg)
    assert got.verdict is None and "run ams doctor again" in got.warnings[0]
    ok = {**record, "verdict": "safe", "methods_ok": ["fcntl", "dotlock"],
          "lock_method": "fcntl", "settings": {"clock_skew": 9.0, "lease_seconds": 30.0}}
    (vdir / "h1.json").write_text(json.dumps(ok))
    got = startup_check(cfg)
    assert got.verdict is not None and got.warnings == (
        "store.clock_skew = 5 is below the 9 ams doctor (then, run run-x) recommends",)
    t0 = time.perf_counter()
    for _ in range(20):
        startup_check(cfg)
    assert (time.perf_counter() - t0) / 20 < 0.5
