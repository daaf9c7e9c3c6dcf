"""Where a worker's copies of object-storage files live: a folder per process that goes when the process exits,
and that the next process on the node removes when the process was killed without an exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from stages.core import storage
from tests.conftest import REPO

MAKE_ROOT = "from stages.core import storage; print(storage._fetch_root(), flush=True); import sys; sys.stdin.read()"


def _process(tmp_path):
    return subprocess.Popen([sys.executable, "-c", MAKE_ROOT], cwd=REPO, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)})


def test_a_process_copies_go_when_it_exits_and_a_killed_one_is_swept_by_the_next(tmp_path):
    exits, killed, alive = _process(tmp_path), _process(tmp_path), _process(tmp_path)
    folders = {name: p.stdout.readline().strip() for name, p in (("exits", exits), ("killed", killed),
                                                                  ("alive", alive))}
    for folder in folders.values():
        assert folder.startswith(str(tmp_path / storage.FETCHED_PREFIX)) and os.path.isdir(folder)
    exits.communicate("")  # a normal exit removes its own folder
    assert not os.path.exists(folders["exits"])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert os.path.isdir(folders["killed"])  # no exit ran: it stays until someone sweeps
    removed = storage.sweep_fetched(tmp_path)
    assert [str(p) for p in removed] == [folders["killed"]]
    assert os.path.isdir(folders["alive"])  # a live process's copies are never taken
    alive.communicate("")
    assert not os.path.exists(folders["alive"])
