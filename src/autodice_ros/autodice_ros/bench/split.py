"""``autodice bench split MODEL --boards K``: what splitting costs in compute, and how well the
partitioner predicted the stages.

1. Profile the model here (or take ``--profile``), plan ``K`` stages with the partitioner, and
   cut them with the real splitter into a temporary bundle.
2. In one process, with the same session settings as the stage nodes (:func:`create_session`,
   the manifest's threads): time the whole model and each sub-model on the inputs it really
   gets, interleaved in a fresh random order each round for ``reps`` rounds, so load from
   other processes hits both sides alike. Medians throughout. With one thread the clock is the
   calling thread's CPU time (ORT computes on it), which other processes sharing the cores
   do not inflate; wall times are reported too.
3. Report whole-model time vs the sum of the parts (target <= 1.03: splitting must not add
   work), and each stage's predicted time (compute, no link) vs measured (target: p90 of the
   absolute relative error <= 10 %). The prediction under test is the cost model, so its
   calibration comes from an ORT-profiled whole-model session run in the same interleaved
   rounds (``prediction.roofline``; ``measured``: the summed node times of that profile):
   other processes speed this machine up and down by tens of per cent within a minute, and a
   profile taken earlier would charge that drift to the model. The up-front profile's roofline,
   which chose the cuts, is reported too (``roofline_planned``).

The transfer between boards is not part of this benchmark (see ``bench hop`` / ``pipeline``).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.errors import BundleError
from autodice_ros.graph.model import ModelGraph, analyze
from autodice_ros.graph.weights import read_lean
from autodice_ros.inference import create_session
from autodice_ros.manifest import Bundle, Partition, load_bundle
from autodice_ros.mapping import build_mapping
from autodice_ros.partitioner import Plan, describe, plan, priced_chain
from autodice_ros.profile import (
    Measured,
    Profile,
    profile_from,
    profile_from_json,
    profile_model,
    profiling_session,
    profiling_target,
    stage_env,
    timed_run,
)
from autodice_ros.split.bundle import open_model, write_split
from autodice_ros.verify import open_sessions, partition_order, random_inputs, run_chain

_WARMUP = 2
RATIO_TARGET = 1.03
P90_TARGET = 0.10


def _timed(session: Any, feed: dict[str, np.ndarray]) -> tuple[float, float]:
    """(wall, CPU time of this thread) of one run."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    session.run(None, feed)
    return time.perf_counter() - start, time.thread_time() - start_cpu


def _errors(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    """Absolute relative error per stage, and of each stage's share of the total (what balancing
    the pipeline needs; immune to the whole machine being faster or slower than when profiled)."""
    errors = [abs(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    shares = [abs(p / sum(predicted) - m / sum(measured)) / (m / sum(measured))
              for p, m in zip(predicted, measured, strict=True)]
    return {'predicted_ms': [round(p * 1e3, 3) for p in predicted],
            'abs_rel_error': [round(e, 4) for e in errors],
            'p90_error': round(float(np.percentile(errors, 90)), 4),
            'share_p90_error': round(float(np.percentile(shares, 90)), 4),
            'target_met': bool(np.percentile(errors, 90) <= P90_TARGET)}


def measure(model: Path, bundle_dir: Path, reps: int, workdir: Path) -> dict[str, Any]:
    """The timing rounds (run in a child with :func:`stage_env`); raw times and a profile."""
    bundle = load_bundle(bundle_dir)
    parts = partition_order(bundle)
    threads = parts[0].threads
    sessions = open_sessions(bundle)
    whole, _ = create_session(model, threads, parts[0].provider)
    inputs = random_inputs(bundle.manifest.inputs, seed=0)
    feeds = _stage_feeds(bundle, parts, sessions, inputs)
    expected = whole.run(None, inputs)
    chained = run_chain(bundle, inputs, sessions)
    max_abs = max(float(np.max(np.abs(a - chained[o.name])))
                  for a, o in zip(expected, whole.get_outputs(), strict=True))
    graph = analyze(read_lean(model).model, model)
    profiled = profiling_session(profiling_target(model, graph, workdir), threads, workdir)
    calibrating = Measured([], [], [])
    for _ in range(_WARMUP):
        whole.run(None, inputs)
        timed_run(profiled, inputs, calibrating)
        for part in parts:
            sessions[part.name].run(None, feeds[part.name])
    whole_t: list[tuple[float, float]] = []
    part_t: dict[str, list[tuple[float, float]]] = {p.name: [] for p in parts}
    rng = np.random.default_rng(0)
    for _ in range(reps):
        # A fresh order every round: nothing always runs first, or right after the whole model.
        for slot in rng.permutation(len(parts) + 2):
            if slot < len(parts):
                part = parts[slot]
                part_t[part.name].append(_timed(sessions[part.name], feeds[part.name]))
            elif slot == len(parts):
                whole_t.append(_timed(whole, inputs))
            else:
                timed_run(profiled, inputs, calibrating)
    calibrating.trace = json.loads(Path(profiled.end_profiling()).read_text())
    alongside = profile_from(model, graph, calibrating, threads, _WARMUP)
    return {'threads': threads, 'parts': [p.name for p in parts], 'whole': whole_t, 'part': part_t,
            'max_abs_diff': max_abs, 'profile': alongside.to_json()}


def run(model: Path, boards: int, reps: int = 15, profile: Profile | None = None,
        out: Path | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the JSON-able report."""
    started = time.perf_counter()
    if profile is None:
        profile = profile_model(model)
    lean, graph = open_model(model)
    chosen = plan(graph, boards, profile=profile, cost='roofline')
    with tempfile.TemporaryDirectory(prefix='autodice-bench-split-') as tmp:
        mapping = build_mapping(chosen.specs(), graph, f'plan of {model}')
        write_split(lean, graph, mapping, Path(tmp) / 'bundle')
        command = [sys.executable, '-m', 'autodice_ros.bench.split', str(model), str(Path(tmp) / 'bundle'),
                   str(reps), tmp]
        done = subprocess.run(command, env=stage_env(os.environ), capture_output=True, text=True,
                              timeout=3600)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise BundleError(f'{model}: timing the split failed: {lines[-1] if lines else "?"}')
        raw = json.loads(done.stdout)
    alongside = profile_from_json(raw['profile'], f'{model} (profiled alongside)')
    names = raw['parts']
    # One thread computes on the calling thread: its CPU time is what the model costs, whatever
    # else shares the cores. With more threads only wall time tells.
    clock = 1 if raw['threads'] == 1 else 0
    whole_s = [t[clock] for t in raw['whole']]
    part_s = {name: [t[clock] for t in raw['part'][name]] for name in names}
    sums = [sum(part_s[name][i] for name in names) for i in range(reps)]
    ratios = [s / w for s, w in zip(sums, whole_s, strict=True)]
    by_name = {name: statistics.median(part_s[name]) for name in names}
    measured = [by_name[s.name] for s in chosen.stages]
    report: dict[str, Any] = {
        'benchmark': 'split', 'model': str(model), 'boards': boards, 'reps': reps,
        'threads': raw['threads'], 'clock': 'thread CPU time' if clock else 'wall',
        'whole_ms': round(statistics.median(whole_s) * 1e3, 3),
        'parts_ms': {name: round(by_name[name] * 1e3, 3) for name in names},
        'sum_of_parts_ms': round(statistics.median(sums) * 1e3, 3),
        'ratio': round(statistics.median(ratios), 4),
        'ratio_of_medians': round(sum(measured) / statistics.median(whole_s), 4),
        'ratio_target': RATIO_TARGET,
        'ratio_target_met': bool(statistics.median(ratios) <= RATIO_TARGET),
        'whole_wall_ms': round(statistics.median(t[0] for t in raw['whole']) * 1e3, 3),
        'sum_of_parts_wall_ms': round(statistics.median(
            sum(raw['part'][name][i][0] for name in names) for i in range(reps)) * 1e3, 3),
        'max_abs_diff': raw['max_abs_diff'],
        'stages': [{'name': s.name, 'first': s.first, 'last': s.last, 'nodes': len(s.nodes),
                    'inputs': list(s.inputs), 'input_bytes': s.input_bytes,
                    'memory_bytes': s.memory_bytes} for s in chosen.stages],
        'prediction': {},
        'plan_profile': {'model': profile.model, 'run_ms': round(profile.run_s * 1e3, 3),
                         'calibration': profile.calibration.source},
    }
    for cost in ('roofline', 'measured'):
        predicted, source = _predict(graph, chosen, alongside, cost)
        report['prediction'][cost] = {**_errors(predicted, measured), 'source': source}
    predicted, source = _predict(graph, chosen, profile, 'roofline')
    report['prediction']['roofline_planned'] = {**_errors(predicted, measured), 'source': source}
    report['targets_met'] = report['ratio_target_met'] and report['prediction']['roofline']['target_met']
    report['seconds'] = round(time.perf_counter() - started, 1)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + '\n')
    return report


def _predict(graph: ModelGraph, chosen: Plan, profile: Profile, cost: str) -> tuple[list[float], str]:
    """Each chosen stage's predicted time without the link, under ``cost`` priced by ``profile``."""
    chain, source = priced_chain(graph, profile, cost)
    starts = [chain.ids.index(s.first) for s in chosen.stages]
    return [s.time_s for s in describe(chain, starts, source).stages], source


def _stage_feeds(bundle: Bundle, parts: list[Partition], sessions: dict[str, Any],
                 inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The exact inputs each partition receives in the chain."""
    tensors = dict(inputs)
    feeds = {}
    for part in parts:
        feeds[part.name] = {t.name: tensors[t.name] for t in part.inputs}
        names = [o.name for o in sessions[part.name].get_outputs()]
        tensors.update(zip(names, sessions[part.name].run(names, feeds[part.name]), strict=True))
    return feeds


if __name__ == '__main__':
    print(json.dumps(measure(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))))
