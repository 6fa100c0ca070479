"""The wheel ships one import root with the drivers inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")
def test_wheel_contains_drivers_under_one_import_root(tmp_path: Path) -> None:
    """`drivers/` is packaged as edge_agent.drivers; nothing else lands at top level."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("edge_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("edge_agent/drivers/__init__.py", "edge_agent/drivers/base.py",
                     "edge_agent/drivers/registry.py", "edge_agent/drivers/modbus/driver.py",
                     "edge_agent/drivers/modbus/codec.py", "edge_agent/drivers/modbus/config.py",
                     "edge_agent/cli.py"):
        assert required in names
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"edge_agent", wheel.name.split("-")[0] + "-"
                         + wheel.name.split("-")[1] + ".dist-info"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edge-agent = edge_agent.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()
