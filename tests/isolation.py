"""Run Python code in a fresh process where `dtfsal_hf` cannot be imported.

An import blocker goes first on `sys.meta_path`, so neither an editable install nor the checkout on
`sys.path` can provide the package: what loads must come from a saved folder's own files.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_PACKAGE = textwrap.dedent(
    """
    import sys

    class _BlockPackage:
        def find_spec(self, name, path=None, target=None):
            if name == "dtfsal_hf" or name.startswith("dtfsal_hf."):
                raise ModuleNotFoundError(f"{name} is blocked in this process")

    sys.meta_path.insert(0, _BlockPackage())
    try:
        import dtfsal_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("dtfsal_hf was importable")
    """
)


def run_without_package(code: str, cwd, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` with `dtfsal_hf` blocked; raise with the process's output if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
