"""scripts/setup.sh refuses, in one line and before creating anything, a disk too small for the install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def test_setup_stops_with_one_line_on_a_disk_without_room(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, checkout / "scripts" / "setup.sh")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    # df as POSIX prints it, with 287 MB free (as a CI machine once had)
    df = stubs / "df"
    df.write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                  "echo '/dev/vda 264000000 263700000 287000 100% /'\n")
    df.chmod(0o755)
    done = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "installing needs about 8 GB" in done.stderr, done.stderr
    assert done.stderr.startswith("setup: ") and " free on " in done.stderr
    assert not (checkout / ".venv").exists()
