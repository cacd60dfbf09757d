"""``autodice compare``: per-board figures of each strategy, consistent with each other and with the
energy model; the energy model file and link rates read as documented."""
from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from pipeline_helpers import autodice

from autodice_ros.energy import EnergyError, format_rate, load_energy, parse_rate

cli = partial(autodice, check=False)


@pytest.mark.parametrize(('text', 'bits'), [('100mbit', 100_000_000), ('1gbit', 10**9), ('1e9', 10**9),
                                            ('2.5gbit', 2_500_000_000), ('unshaped', None)])
def test_link_rates(text: str, bits: int | None) -> None:
    assert parse_rate(text) == bits
    assert format_rate(bits) == {'1e9': '1gbit', '2.5gbit': '2500mbit'}.get(text, text)


def test_shipped_energy_model_and_bad_files(tmp_path: Path) -> None:
    model = load_energy()
    assert model.board_watts('any_board') == model.watts_per_core['default'] > 0
    assert model.link_nj(100_000_000) == model.nj_per_byte['100mbit'] > model.link_nj(10**9)
    bad = tmp_path / 'energy.yaml'
    bad.write_text('boards: {nx01: {watts_per_core: 2}}\nlinks: {default: {nj_per_byte: 8}}\n')
    with pytest.raises(EnergyError, match=f'{bad}: boards and links each need a default entry'):
        load_energy(bad)
    with pytest.raises(EnergyError, match="--link 'fast'"):
        parse_rate('fast')


def test_compare_strategies_per_board(tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    model = zoo_model('squeezenet')
    out, png = tmp_path / 'compare.json', tmp_path / 'compare.png'
    result = cli('compare', str(model), '--boards', '2', '--strategies', 'single,layer,lop,height',
                 '--link', '100mbit', '--runs', '1', '-o', str(out), '--plot', str(png))
    assert result.returncode == 0, result.stdout + result.stderr
    assert '| lop | board1 |' in result.stdout                       # the Markdown table
    data = json.loads(out.read_text())
    assert data['link'] == '100mbit' and data['boards'] == 2
    by = {s['strategy']: s for s in data['strategies']}
    assert list(by) == ['single', 'layer', 'lop', 'height'] and not any(s['error'] for s in by.values())
    single = by['single']['boards']
    assert len(single) == 1 and single[0]['sent_bytes'] == single[0]['received_bytes'] == 0

    def total(strategy: str, key: str) -> float:
        return sum(b[key] for b in by[strategy]['boards'])
    flops, weights = total('single', 'flops'), total('single', 'weight_bytes')
    assert total('layer', 'flops') == pytest.approx(flops, rel=1e-3)
    assert total('layer', 'weight_bytes') == pytest.approx(weights, rel=1e-3)
    assert total('lop', 'flops') == pytest.approx(flops, rel=0.02)          # pieces add no work
    assert total('lop', 'weight_bytes') == pytest.approx(weights, rel=0.02)  # nor weights
    assert total('height', 'flops') > flops                                 # the halo is recomputed
    assert total('height', 'weight_bytes') > weights                        # tiles share weights
    layer = by['layer']['boards']
    assert [b['board'] for b in layer] == ['board0', 'board1']
    assert layer[0]['sent_bytes'] == layer[1]['received_bytes'] > 0
    assert total('layer', 'sent_bytes') == total('layer', 'received_bytes')
    energy = load_energy()
    watts, nj = energy.watts_per_core['default'], energy.nj_per_byte['100mbit']
    for strategy in by.values():
        for board in strategy['boards']:
            assert board['energy_j'] == pytest.approx(
                board['compute_s'] * watts + (board['sent_bytes'] + board['received_bytes']) / 2 * nj * 1e-9)
            assert board['transfer_s'] == pytest.approx(board['received_bytes'] / 12.5e6)
            assert board['measured_cpu_s'] > 0 and board['measured_rss_bytes'] > 0
            assert board['measured_energy_j'] > board['measured_cpu_s'] * watts * 0.999
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_compare_bad_link_fails_cleanly(zoo_model: Callable[[str], Path]) -> None:
    result = cli('compare', str(zoo_model('squeezenet')), '--boards', '2', '--link', 'fast', '--no-measure')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["autodice compare: error: --link 'fast': expected a rate "
                                                  "like 100mbit, 1gbit or 1e9 (bits per second)"]
