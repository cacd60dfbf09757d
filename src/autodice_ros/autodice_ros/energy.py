"""The energy model shared by ``autodice compare`` and the board benchmarks: ``config/energy.yaml``.

Per frame and board: CPU seconds x the board's ``watts_per_core``, plus bytes on its link x the
link's ``nj_per_byte``. The file states where its figures come from; it is an estimate, not a
measurement. Link rates are written as tc writes them (``100mbit``, ``1gbit``) and name the
file's link entries; any other rate uses ``default``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autodice_ros.errors import AutodiceError

ENERGY_CONFIG = 'energy.yaml'
_RATE = re.compile(r'^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?)(bit|bps)?\s*$', re.IGNORECASE)
_SCALE = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}


class EnergyError(AutodiceError):
    """The energy model cannot be read, or a link rate is malformed."""


@dataclass(frozen=True)
class EnergyModel:
    watts_per_core: Mapping[str, float]
    nj_per_byte: Mapping[str, float]
    source: str

    def board_watts(self, board: str) -> float:
        return self.watts_per_core.get(board, self.watts_per_core['default'])

    def link_nj(self, bits_per_s: int | None) -> float:
        return self.nj_per_byte.get(format_rate(bits_per_s), self.nj_per_byte['default'])


def parse_rate(text: str) -> int | None:
    """``100mbit``, ``1gbit``, ``1e9`` -> bits per second; ``unshaped``/``none``: no limit."""
    if text.strip().lower() in ('unshaped', 'none', 'inf', ''):
        return None
    match = _RATE.match(text)
    if not match:
        raise EnergyError(f'--link {text!r}: expected a rate like 100mbit, 1gbit or 1e9 (bits per second)')
    bits = int(float(match.group(1)) * _SCALE[match.group(2).lower()])
    if bits <= 0:
        raise EnergyError(f'--link {text!r}: the rate must be positive')
    return bits


def format_rate(bits: int | None) -> str:
    if bits is None:
        return 'unshaped'
    for div, unit in ((10**9, 'gbit'), (10**6, 'mbit'), (10**3, 'kbit')):
        if bits >= div and bits % div == 0:
            return f'{bits // div}{unit}'
    return f'{bits}bit'


def config_file(name: str) -> Path:
    """A shipped config file: the installed share dir, else the repository's ``config/``."""
    from autodice_ros.environment import config_dir

    repository = Path(__file__).resolve().parents[3] / 'config'
    for directory in (config_dir(), repository):
        if (directory / name).is_file():
            return directory / name
    return repository / name


def load_energy(path: Path | None = None) -> EnergyModel:
    """Read ``path`` (default: the shipped ``energy.yaml``); errors name the file and field."""
    import yaml

    path = path or config_file(ENERGY_CONFIG)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise EnergyError(f'{path}: cannot read the energy model: {exc.strerror or exc}') from exc
    except yaml.YAMLError as exc:
        raise EnergyError(f'{path}: not valid YAML') from exc
    try:
        watts = {str(name): float(entry['watts_per_core']) for name, entry in data['boards'].items()}
        nj = {str(name): float(entry['nj_per_byte']) for name, entry in data['links'].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnergyError(f'{path}: expected boards.<name>.watts_per_core and links.<rate>.nj_per_byte '
                          f'(with a default entry each): {exc}') from exc
    if 'default' not in watts or 'default' not in nj:
        raise EnergyError(f'{path}: boards and links each need a default entry')
    return EnergyModel(watts, nj, str(path))
