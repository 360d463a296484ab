"""``ams doctor``: measure what the store relies on from a shared filesystem.

Run on two or more hosts at once against the same directory, it checks the
contract the store is built on (docs/format.md, "What each step relies on
from the filesystem"): atomic rename with one winner, O_EXCL, close-to-open
visibility and how long it takes, fcntl locks across hosts, fsync, the
clocks; then says which ``store.lock_method`` and settings to use, or that
the filesystem is unsafe.  docs/doctor.md describes every check.

Layout of the package:

* :mod:`._rendezvous`: how the hosts meet and synchronise through files;
* :mod:`._local`, :mod:`._visibility`, :mod:`._races`, :mod:`._locking`:
  the checks, each returning raw measurements;
* :mod:`._verdict`: pure judgement of raw measurements into checks and a
  verdict, identical on every host;
* :mod:`._run`: one host's run, start to end;
* :mod:`._startup`: the verdict files and :func:`startup_check`, the guard
  roles call before they use the store.
"""

from ams.doctor._model import (
    ALL_CHECKS,
    CROSS_HOST_CHECKS,
    SINGLE_HOST_CHECKS,
    Check,
    Report,
    Verdict,
)
from ams.doctor._run import Options, run_doctor, trials_for
from ams.doctor._startup import (
    StartupCheck,
    UnsafeFilesystem,
    fs_identity,
    read_verdict,
    startup_check,
    verdict_path,
)
from ams.doctor._verdict import decide, judge_all

__all__ = [
    "ALL_CHECKS", "CROSS_HOST_CHECKS", "Check", "Options", "Report", "SINGLE_HOST_CHECKS",
    "StartupCheck", "UnsafeFilesystem", "Verdict", "decide", "fs_identity", "judge_all",
    "read_verdict", "run_doctor", "startup_check", "trials_for", "verdict_path",
]
