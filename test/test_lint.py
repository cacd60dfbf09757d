"""The code base passes its linters (ruff: style, imports, bugbear; mypy: types)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    result = run(sys.executable, '-m', 'ruff', 'check', 'src', 'test', 'launch')
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run(sys.executable, '-m', 'mypy', '--config-file', 'mypy.ini')
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_xml_is_format_3_with_real_run_deps() -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / 'src' / 'autodice_ros' / 'package.xml').getroot()
    assert root.get('format') == '3'
    deps = {e.text for e in root.iter('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'lifecycle_msgs',
            'autodice_msgs', 'launch_ros'} <= deps
