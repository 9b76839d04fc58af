"""The `dtfsal` command under the package's name: `dtfsal_hf.cli` is the top-level module `dtfsal_cli` (one
module, not a copy), and `python -m dtfsal_hf.cli ...` (e.g. under `accelerate launch` or `torchrun`) runs it.

The command itself lives outside the package so that `dtfsal --help` does not load torch: see `dtfsal_cli`.
"""

import sys

import dtfsal_cli

if __name__ == "__main__":
    sys.exit(dtfsal_cli.main())
else:
    sys.modules[__name__] = dtfsal_cli
