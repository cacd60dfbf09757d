"""``autodice bench all`` (``make bench``): every benchmark into one directory, and one summary.

Each benchmark runs through the same CLI a user would type and writes its JSON (and plots)
under ``OUT``; ``OUT/summary.md`` collects every target as a ratio measured in this run, with
whether it is met. ``--short`` keeps the whole suite to a few minutes: fewer repetitions, the
boards benchmark in its short form (skipped, with the reason, where namespaces are unavailable).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from autodice_ros import cli


def _autodice(*args: str) -> None:
    status = cli.main(list(args))
    if status != 0:
        raise RuntimeError(f'autodice {" ".join(args)} exited with {status}')


def zoo_model(work: Path, name: str) -> Path:
    path = work / f'{name}.onnx'
    if not path.exists():
        _autodice('zoo', name, '-o', str(path))
    return path


def split_bundle(work: Path, model: Path, boards: int) -> Path:
    out = work / f'{model.stem}_{boards}way'
    _autodice('split', str(model), '--boards', str(boards), '-o', str(out), '--force')
    return out


def _boards_unavailable() -> str:
    from autodice_ros.boards import check_available
    from autodice_ros.errors import AutodiceError

    try:
        check_available()
    except AutodiceError as exc:
        return str(exc)
    return ''


def run_all(out: Path, short: bool = True) -> dict[str, Any]:
    """Run the suite; returns {benchmark: report or {'skipped': reason}} and writes summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / 'work'
    work.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    resnet = zoo_model(work, 'resnet50')
    vgg = zoo_model(work, 'vgg19')
    steps: dict[str, list[str]] = {
        'hop': ['bench', 'hop', '--count', '20' if short else '30', '-o', str(out / 'hop.json')]}
    for model in (resnet, vgg):
        steps[f'split_{model.stem}'] = ['bench', 'split', str(model), '--boards', '3', '--reps',
                                        '6' if short else '15', '-o', str(out / f'split_{model.stem}.json')]
    steps['pipeline_resnet50'] = ['bench', 'pipeline', str(split_bundle(work, resnet, 3)), '--frames',
                                  '30' if short else '60', '--plot', str(out / 'pipeline_resnet50.png'),
                                  '-o', str(out / 'pipeline_resnet50.json')]
    squeezenet = split_bundle(work, zoo_model(work, 'squeezenet'), 3)
    steps['faults_squeezenet'] = ['bench', 'faults', str(squeezenet), '--kills', '2' if short else '3',
                                  '-o', str(out / 'faults_squeezenet.json')]
    for link in ('100mbit', '1gbit'):
        name = f'compare_vgg19_{link}'
        steps[name] = ['compare', str(vgg), '--boards', '3', '--link', link, '--runs', '2' if short else '5',
                       '-o', str(out / f'{name}.json'), '--plot', str(out / f'{name}.png')]
    reason = _boards_unavailable()
    if not reason:
        steps['boards'] = ['bench', 'boards', *(['--short'] if short else []), '-o', str(out / 'boards')]
    results: dict[str, Any] = {}
    for name, args in steps.items():
        start = time.monotonic()
        try:
            _autodice(*args)
        except (RuntimeError, OSError) as exc:
            results[name] = {'failed': str(exc)}
        timings[name] = time.monotonic() - start
    if reason:
        results['boards'] = {'skipped': reason}
    for path in sorted(out.glob('*.json')):
        results.setdefault(path.stem, json.loads(path.read_text()))
    boards_json = out / 'boards' / 'bench-boards.json'
    if boards_json.exists():
        results.setdefault('boards', json.loads(boards_json.read_text()))
    (out / 'summary.md').write_text(summary(results, timings, short))
    return {'summary': str(out / 'summary.md'), 'seconds': timings}


def _row(target: str, measured: Any, limit: str, met: Any) -> str:
    text = f'{measured:.3g}' if isinstance(measured, float) else str(measured)
    verdict = 'met' if met is True else 'NOT met' if met is False else '-'
    return f'| {target} | {text} | {limit} | {verdict} |'


def summary(results: dict[str, Any], timings: dict[str, float], short: bool) -> str:
    """The targets of every benchmark, as measured ratios, in one markdown table."""
    rows = ['| target | measured | limit | |', '|---|---|---|---|']
    hop = results.get('hop', {})
    for setup, what in (('lent', 'written in place, as stages do'), ('fastpath', 'publish copies')):
        fast = hop.get('setups', {}).get(setup, {}).get('3.2MB', {})
        if 'p50_over_memcpy' in fast:
            rows.append(_row(f'3.2 MB same-board hop (fast path, {what}) p50 / memcpy',
                             fast['p50_over_memcpy'], '<= 8', fast['p50_over_memcpy'] <= 8))
    for model in ('resnet50', 'vgg19'):
        split = results.get(f'split_{model}', {})
        if 'ratio' in split:
            rows.append(_row(f'{model} K=3 sum of parts / whole', split['ratio'], '<= 1.03',
                             split['ratio_target_met']))
        p90 = split.get('prediction', {}).get('roofline', {}).get('p90_error')
        if p90 is not None:
            rows.append(_row(f'{model} K=3 stage-time prediction p90 error (roofline)', p90, '<= 0.10',
                             p90 <= 0.10))
    pipe = results.get('pipeline_resnet50', {})
    if 'throughput_over_ideal' in pipe:
        rows.append(_row('resnet50 K=3 pipeline fps / ideal (this machine)', pipe['throughput_over_ideal'],
                         '>= 0.9', pipe['throughput_over_ideal'] >= 0.9))
        worst = max(pipe['stage_rss_over_single'].values())
        rows.append(_row('resnet50 K=3 largest stage RSS / single node', worst,
                         f"<= {pipe['target_rss_over_single']:.2f}", worst <= pipe['target_rss_over_single']))
    faults = results.get('faults_squeezenet', {})
    if 'resume_s' in faults:
        resume_max = faults['resume_max_s']
        rows.append(_row(f"squeezenet K=3 resume after a stage restart, worst of {faults['kills']} kills (s)",
                         '-' if resume_max is None else resume_max, f"<= {faults['target_s']:g}",
                         faults['target_met']))
        mismatched = faults['mismatched_frames']
        rows.append(_row('squeezenet K=3 outputs != unsplit model across restarts', mismatched, '0',
                         mismatched == 0))
    boards = results.get('boards', {})
    for target in boards.get('targets', []):
        value = target['value'] if target['value'] is not None else '-'
        limit = target['limit'] if target['limit'] is not None else '-'
        rows.append(_row(f"boards: {target['target']}", value, str(limit), target['met']))
    if 'skipped' in boards:
        rows.append(f"| boards benchmark | skipped: {boards['skipped']} | | |")
    failed = [f'- {name}: {r["failed"]}' for name, r in results.items()
              if isinstance(r, dict) and 'failed' in r]
    lines = [f'# autodice benchmarks ({"short" if short else "full"} run)', '',
             f'Machine: {os.cpu_count()} cores, load before the run {os.getloadavg()[0]:.2f}. '
             'Every figure is a ratio of two quantities measured in this run.', '', *rows, '',
             'Time per benchmark (s): ' + ', '.join(f'{k} {v:.0f}' for k, v in timings.items())]
    if failed:
        lines += ['', 'Failed:', *failed]
    return '\n'.join(lines) + '\n'
