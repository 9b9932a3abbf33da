"""Every Python code block in the README and docs/ runs, so the documentation cannot rot.

Blocks of one file run in order in one namespace (later blocks may use earlier names), in a temporary working
directory. A block fenced as ```python skip-test is shown to readers but not run (only for GPU/torchrun examples).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def _blocks(path: Path):
    return [(m.group(2), "skip-test" in m.group(1)) for m in _BLOCK.finditer(path.read_text())]


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": f"docs_{path.stem}"}
    for i, (code, skip) in enumerate(_blocks(path)):
        if skip:
            continue
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), ns)
        except Exception as exc:  # re-raise with the block's place so a failure is easy to find
            raise AssertionError(f"{path.name}, code block {i} failed: {exc!r}\n{code}") from exc
