"""The example plugin of docs/plugins.md, and distributions installed into a folder as pip would."""

from __future__ import annotations

import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def example_plugin_source() -> str:
    """The complete example plugin of docs/plugins.md: the python block after its marker."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("<!-- example-plugin -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


PLUGIN_SOURCE = example_plugin_source()


def write_distribution(root: Path, distribution: str, package: str, source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """A distribution installed into `root` as pip would: the package and a `.dist-info` with its entry points."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = []
    for group, names in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in names.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root
