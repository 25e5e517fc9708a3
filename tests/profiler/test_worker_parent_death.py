"""Pool workers exit when the campaign process dies, even by SIGKILL (issue 14 item 6)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PARENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from profiler.executors.local import LocalExecutor

    def job(item):
        Path(item["dir"], f"{os.getpid()}.pid").write_text("")
        time.sleep(120)  # a long fine-tuning job

    if __name__ == "__main__":
        d = sys.argv[1]
        for _ in LocalExecutor(workers=2).map_unordered(job, [{"dir": d}, {"dir": d}]):
            pass
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent-of-record has not reaped it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "workers never started their jobs"
            time.sleep(0.2)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert all(_alive(w) for w in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), f"workers {workers} outlived their parent"
    finally:
        parent.kill()
        for p in tmp_path.glob("*.pid"):
            try:
                os.kill(int(p.stem), signal.SIGKILL)
            except ProcessLookupError:
                pass
