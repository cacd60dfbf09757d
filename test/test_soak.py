"""The 1-minute soak: every frame checked against the unsplit model, no process's memory growing."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import autodice, split


def test_one_minute_soak_mismatches_nothing_and_does_not_grow(tmp_path: Path,
                                                              zoo_model: Callable[[str], Path]) -> None:
    bundle = split(zoo_model('squeezenet'), tmp_path / 'bundle', '--boards', '2')
    result = autodice('soak', str(bundle), '--duration', '60', '--rate', '5', '--warmup', '15',
                      '-o', str(tmp_path / 'soak.json'), timeout=240)
    report = json.loads((tmp_path / 'soak.json').read_text())
    assert report['ok'], result.stdout + result.stderr
    assert report['sent'] >= 290 and report['compared'] == report['sent']
    assert report['mismatched'] == 0
    assert len(report['rss_growth']) == 4 and max(report['rss_growth'].values()) < 0.05
