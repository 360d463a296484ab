"""The churn meter counts what an AFS client would: two real meter mounts of one directory.

Each mount is a separate meter process (a simulated host) reporting to a real
coordinator process; the benchmark (``python -m benchmarks.churn``) relies
on exactly this.  The test runs with kernel caching off and with it on (the
benchmark's default, where a break must also drop the kernel's cached names),
and checks the counts to the unit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.churn.cluster import Cluster, mounted
from benchmarks.churn.model import CHUNK, dir_bytes

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="needs root and /dev/fuse for allow_other FUSE mounts")


def test_directory_sizes_follow_the_afs_page_format() -> None:
    assert dir_bytes([]) == 2048  # . and .. in the first page
    # 51 one-slot entries fill the first page (64 slots less 13 of headers); . and ..
    # are two of them, so the 50th name opens a second page
    assert dir_bytes([3] * 49) == 2048
    assert dir_bytes([3] * 50) == 4096
    assert dir_bytes([16]) == dir_bytes([15]) == 2048  # a 16-byte name takes 2 slots


@pytest.mark.parametrize("kernel_cache", [0.0, 10.0], ids=["uncached", "kernel-cache"])
def test_a_change_through_one_host_breaks_the_other_hosts_callback(
        tmp_path: Path, kernel_cache: float) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    cluster = Cluster(tmp_path / "cluster", backing, mailbox_re=r"box",
                      cache_timeout=kernel_cache)
    with cluster:
        a = cluster.mount("a")
        b = cluster.mount("b")
        (a / "box").mkdir()
        (a / "box" / "f1").write_bytes(b"x" * 100)
        # b lists the folder and reads the file: it holds both callbacks now
        assert sorted(os.listdir(b / "box")) == ["f1"]
        assert (b / "box" / "f1").read_bytes() == b"x" * 100
        before = cluster.snapshot()

        # a files a message the Maildir way: create, then rename in the same directory
        (a / "box" / "f2").write_bytes(b"y" * 10)
        os.rename(a / "box" / "f2", a / "box" / "f3")
        # and a stat through b, of a name b had looked up, still sees the truth
        assert os.stat(b / "box" / "f1").st_size == 100
        assert sorted(os.listdir(b / "box")) == ["f1", "f3"]
        d = cluster.delta(before)
        assert d["a"].created == 1 and d["a"].renamed == 1 and d["a"].removed == 0
        assert d["a"].mailbox_created == 1 and d["a"].mailbox_renamed == 1
        assert d["a"].dir_breaks == 0  # nobody else changed anything
        # one break: b held no callback on box after the first change, so the rename
        # had nobody to break; then one refetch of the whole directory, at its size now
        assert d["b"].dir_breaks == 1
        assert d["b"].dir_refetches == 1
        assert d["b"].dir_refetch_bytes == dir_bytes([2, 2]) == 2048
        assert d["b"].file_breaks == 0 and d["b"].file_fetch_bytes == 0

        # a appends to f1: b's callback on it breaks, and b's next read refetches the
        # chunk (here the whole file: it is shorter than one chunk)
        before = cluster.snapshot()
        with open(a / "box" / "f1", "ab") as f:
            f.write(b"z" * 50)
        assert (b / "box" / "f1").read_bytes() == b"x" * 100 + b"z" * 50
        d = cluster.delta(before)
        assert d["b"].file_breaks == 1 and d["b"].dir_breaks == 0
        assert d["b"].file_refetch_bytes == d["b"].file_fetch_bytes == 150 < CHUNK
        assert d["a"].entries == 0 and d["a"].data_changes >= 1

        # reading again under the callback costs nothing
        before = cluster.snapshot()
        assert (b / "box" / "f1").read_bytes() == b"x" * 100 + b"z" * 50
        assert os.listdir(b / "box")
        d = cluster.delta(before)
        assert d["b"].breaks == 0 and d["b"].file_fetch_bytes == 0
        assert d["b"].dir_fetch_bytes == 0 and d["b"].status_fetches == 0
        mounts = [a, b]
    assert not any(mounted(m) for m in mounts)
