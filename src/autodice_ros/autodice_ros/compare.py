"""``autodice compare``: the partitioning strategies side by side, per board (Tang, Guo, Stefanov,
arXiv 2210.08392, asked which strategy cuts per-device energy most, and when).

Each strategy's plan (:func:`autodice_ros.split.auto.mapping_for_strategy`) is split for real,
and every figure comes from the sub-models as written and the manifest as the runtime reads it:

- FLOPs and weight bytes: summed over the sub-models a board runs;
- peak activation bytes: per sub-model, its inputs (held for the whole run) plus the largest set
  of tensors alive at once, summed over the board's sub-models (each is its own process);
- bytes sent and received per frame: a partition publishes all its outputs as one message on
  one topic, and each subscribing partition on another board receives the whole message (the
  camera head runs on the board of the first partition that reads the image);
- predicted time per frame: the calibrated roofline (:mod:`autodice_ros.profile`: the built-in
  calibration, or ``--profile``) per node, plus a run overhead per sub-model and the cost of
  every tensor crossing its boundary, as the partitioner prices a cut; plus the received bytes
  at ``--link`` rate;
- energy per frame (:mod:`autodice_ros.energy`): CPU seconds x watts per core, plus the link's
  energy per byte for every byte the board sends or receives, half to each end (the figure in
  ``energy.yaml`` covers both ports);
- measured (unless ``--no-measure``): each board's sub-models loaded in one fresh process, each
  run alone on the inputs the whole chain gave it: CPU seconds per frame (median of ``--runs``)
  and the process's peak RSS above its baseline; energy again from the measured CPU time.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.energy import EnergyModel, format_rate
from autodice_ros.errors import AutodiceError
from autodice_ros.graph.cost import node_costs
from autodice_ros.graph.model import ModelGraph, analyze
from autodice_ros.graph.weights import read_lean
from autodice_ros.manifest import INPUT_TOPIC, Bundle, Partition
from autodice_ros.profile import Calibration, fused_flags


@dataclass
class BoardFigures:
    """One board under one strategy, per frame."""

    board: str
    submodels: int
    flops: int
    weight_bytes: int
    activation_bytes: int
    sent_bytes: int
    received_bytes: int
    compute_s: float                    # predicted CPU time
    transfer_s: float                   # received bytes at the link rate
    energy_j: float                     # from the predicted CPU time
    measured_cpu_s: float | None = None
    measured_rss_bytes: int | None = None
    measured_energy_j: float | None = None

    @property
    def time_s(self) -> float:
        return self.compute_s + self.transfer_s


@dataclass
class StrategyFigures:
    strategy: str
    boards: list[BoardFigures] = field(default_factory=list)
    submodels: int = 0
    split_s: float = 0.0
    error: str = ''                     # why the strategy has no plan for this model

    def worst(self, key: str) -> float:
        values = [getattr(b, key) for b in self.boards if getattr(b, key) is not None]
        return max(values) if values else float('nan')

    def total(self, key: str) -> float:
        values = [getattr(b, key) for b in self.boards if getattr(b, key) is not None]
        return sum(values) if values else float('nan')


@dataclass(frozen=True)
class SubModelFigures:
    flops: int
    weight_bytes: int
    activation_bytes: int
    seconds: float


def submodel_figures(path: Path, calibration: Calibration) -> SubModelFigures:
    """FLOPs, weights, peak activations and predicted time of one written sub-model."""
    lean = read_lean(path)
    graph = analyze(lean.model, path)
    costs = node_costs(graph)
    seconds = sum(calibration.seconds(costs, fused_flags(graph))) + calibration.run_overhead_s
    boundary = [n for n in (*graph.inputs, *graph.outputs)]
    seconds += sum(calibration.overhead_s + 2 * graph.types[n].nbytes / calibration.bytes_per_s
                   for n in boundary)
    weights = sum(graph.types[n].nbytes for n in graph.initializers)
    return SubModelFigures(sum(c.flops for c in costs), weights, peak_activations(graph), seconds)


def peak_activations(graph: ModelGraph) -> int:
    """Inputs held for the run plus the most bytes of computed tensors alive at one node."""
    last_use: dict[str, int] = {}
    for p, node in enumerate(graph.nodes):
        for name in node.input:
            last_use[name] = p
    held = sum(graph.types[n].nbytes for n in graph.inputs)
    alive: dict[str, int] = {}
    peak = held
    for p, node in enumerate(graph.nodes):
        if graph.constant[p]:
            continue
        for name in node.output:
            if name and name in graph.types:
                alive[name] = graph.types[name].nbytes
        peak = max(peak, held + sum(alive.values()))
        for name in list(alive):
            if last_use.get(name, -1) <= p and name not in graph.outputs:
                del alive[name]
    return peak


def traffic(bundle: Bundle) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes each board sends and receives per frame over links to other boards."""
    manifest = bundle.manifest
    topic_bytes = {part.topic: sum(t.nbytes for t in part.outputs) for part in manifest.partitions}
    topic_bytes[INPUT_TOPIC] = sum(t.nbytes for t in manifest.inputs)
    owner = {part.topic: part.board for part in manifest.partitions}
    head = next((part.board for part in manifest.partitions
                 if any(t.topic == INPUT_TOPIC for t in part.inputs)), manifest.partitions[0].board)
    owner[INPUT_TOPIC] = head
    sent = {board: 0 for board in manifest.boards}
    received = {board: 0 for board in manifest.boards}
    for part in manifest.partitions:
        for topic in part.input_topics():
            source = owner[topic]
            if source != part.board:
                sent[source] += topic_bytes[topic]
                received[part.board] += topic_bytes[topic]
    return sent, received


def _board_key(name: str) -> tuple[str, int]:
    stem = name.rstrip('0123456789')
    return stem, int(name[len(stem):] or -1)


def link_energy(model: EnergyModel, link: int | None, sent: int, received: int) -> float:
    return (sent + received) / 2 * model.link_nj(link) * 1e-9


def figures(bundle: Bundle, calibration: Calibration, energy: EnergyModel, link: int | None
            ) -> list[BoardFigures]:
    """The per-board figures of a written bundle (predicted only)."""
    manifest = bundle.manifest
    sent, received = traffic(bundle)
    per_part = {part.name: submodel_figures(bundle.model_path(part), calibration)
                for part in manifest.partitions}
    rate = link / 8 if link else None
    boards = []
    for board in sorted(manifest.boards, key=_board_key):
        parts = [per_part[p.name] for p in manifest.on_board(board)]
        compute = sum(f.seconds for f in parts)
        boards.append(BoardFigures(
            board=board, submodels=len(parts), flops=sum(f.flops for f in parts),
            weight_bytes=sum(f.weight_bytes for f in parts),
            activation_bytes=sum(f.activation_bytes for f in parts),
            sent_bytes=sent[board], received_bytes=received[board], compute_s=compute,
            transfer_s=received[board] / rate if rate else 0.0,
            energy_j=compute * energy.board_watts(board) + link_energy(energy, link, sent[board],
                                                                       received[board])))
    return boards


# -- measuring ---------------------------------------------------------------------------------

def crossing_tensors(bundle: Bundle, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor a partition reads, from one run of the whole chain on a seeded input."""
    from autodice_ros.inference import create_session, run_session
    from autodice_ros.verify import partition_order, random_inputs

    tensors = dict(random_inputs(bundle.manifest.inputs, seed))
    for part in partition_order(bundle):
        session, _ = create_session(bundle.model_path(part), part.threads, part.provider)
        results = run_session(session, {t.name: tensors[t.name] for t in part.inputs})
        del session
        tensors.update({t.name: results[t.name] for t in part.outputs})
    return tensors


def measure_board(bundle: Bundle, board: str, tensors: dict[str, np.ndarray], runs: int, workdir: Path
                  ) -> tuple[float, int]:
    """(CPU seconds per frame, peak RSS bytes above baseline) of ``board``'s sub-models, loaded
    together in a fresh process and each run alone on its inputs."""
    from autodice_ros.profile import stage_env

    parts = bundle.manifest.on_board(board)
    feeds = workdir / f'{board}.npz'
    names = list(dict.fromkeys(t.name for p in parts for t in p.inputs))
    np.savez(feeds, np.array(names), *[tensors[n] for n in names])
    command = [sys.executable, '-m', 'autodice_ros.compare', str(bundle.root), board, str(feeds), str(runs)]
    done = subprocess.run(command, env=stage_env(os.environ), capture_output=True, text=True, timeout=3600)
    feeds.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise AutodiceError(f'{bundle.root}: measuring board {board!r} failed: {lines[-1] if lines else "?"}')
    result = json.loads(done.stdout)
    return float(result['cpu_s']), int(result['rss_bytes'])


def _status_bytes(key: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    return 0


def _child(root: str, board: str, feeds_path: str, runs: int) -> int:
    import onnxruntime  # noqa: F401  (imported before the baseline: its size is not the model's)

    from autodice_ros.inference import create_session
    from autodice_ros.manifest import load_bundle

    bundle = load_bundle(root)
    with np.load(feeds_path) as data:
        names = [str(n) for n in data['arr_0']]
        feeds = {name: data[f'arr_{i + 1}'] for i, name in enumerate(names)}
    baseline = _status_bytes('VmRSS')
    parts: list[Partition] = list(bundle.manifest.on_board(board))
    sessions = [create_session(bundle.model_path(p), p.threads, p.provider)[0] for p in parts]
    per_frame = []
    for run in range(runs + 1):
        start = time.process_time()
        for part, session in zip(parts, sessions, strict=True):
            session.run(None, {t.name: feeds[t.name] for t in part.inputs})
        if run:                                      # the first run warms up
            per_frame.append(time.process_time() - start)
    json.dump({'cpu_s': statistics.median(per_frame), 'rss_bytes': _status_bytes('VmHWM') - baseline},
              sys.stdout)
    return 0


# -- one comparison ------------------------------------------------------------------------------

def compare_strategies(model: Path, boards: int, strategies: Sequence[str], link: int | None,
                       energy: EnergyModel, calibration: Calibration, measure: bool = True,
                       runs: int = 5, keep: Path | None = None,
                       progress: Callable[[StrategyFigures], None] | None = None) -> list[StrategyFigures]:
    """Split ``model`` with each strategy over ``boards`` boards and collect the figures."""
    from autodice_ros.split.auto import mapping_for_strategy
    from autodice_ros.split.bundle import open_model, write_split

    lean, graph = open_model(model)
    results = []
    with tempfile.TemporaryDirectory(prefix='autodice-compare-') as tmp:
        for strategy in strategies:
            count = 1 if strategy == 'single' else boards
            name = 'layer' if strategy == 'single' else strategy
            out = (keep or Path(tmp)) / f'{strategy}'
            result = StrategyFigures(strategy)
            try:
                start = time.perf_counter()
                mapping = mapping_for_strategy(graph, name, count)
                bundle = write_split(lean, graph, mapping, out, force=keep is not None, strategy=strategy)
                result.split_s = time.perf_counter() - start
            except AutodiceError as exc:
                result.error = str(exc)
                results.append(result)
                continue
            result.boards = figures(bundle, calibration, energy, link)
            result.submodels = len(bundle.manifest.partitions)
            if measure:
                tensors = crossing_tensors(bundle)
                for entry in result.boards:
                    cpu, rss = measure_board(bundle, entry.board, tensors, runs, Path(tmp))
                    entry.measured_cpu_s, entry.measured_rss_bytes = cpu, rss
                    entry.measured_energy_j = cpu * energy.board_watts(entry.board) + link_energy(
                        energy, link, entry.sent_bytes, entry.received_bytes)
                del tensors
            if keep is None:
                import shutil
                shutil.rmtree(out, ignore_errors=True)
            if progress is not None:
                progress(result)
            results.append(result)
    return results


def report(model: Path, boards: int, link: int | None, energy: EnergyModel, calibration: Calibration,
           results: Sequence[StrategyFigures]) -> dict[str, Any]:
    """The comparison as JSON data."""
    return {
        'model': str(model), 'boards': boards, 'link': format_rate(link),
        'energy_model': energy.source, 'calibration': calibration.source,
        'strategies': [{
            'strategy': r.strategy, 'error': r.error, 'submodels': r.submodels, 'split_s': r.split_s,
            'bottleneck_s': r.worst('time_s') if r.boards else None,
            'max_board_energy_j': r.worst('energy_j') if r.boards else None,
            'total_energy_j': r.total('energy_j') if r.boards else None,
            'max_board_measured_energy_j': r.worst('measured_energy_j') if r.boards else None,
            'boards': [{**asdict(b), 'time_s': b.time_s} for b in r.boards]} for r in results]}


def table(results: Sequence[StrategyFigures]) -> str:
    """A Markdown table: one row per strategy and board."""
    lines = ['| strategy | board | sub-models | GFLOPs | weights MB | peak act. MB | sent MB | recv MB | '
             'CPU ms (pred.) | link ms | CPU ms (meas.) | RSS MB (meas.) | mJ (pred.) | mJ (meas.) |',
             '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']

    def opt(value: float | None, scale: float, fmt: str) -> str:
        return '-' if value is None else format(value * scale, fmt)
    for r in results:
        if r.error:
            lines.append(f'| {r.strategy} | - | {r.error} |' + ' |' * 11)
            continue
        for b in r.boards:
            lines.append(
                f'| {r.strategy} | {b.board} | {b.submodels} | {b.flops / 1e9:.2f} | '
                f'{b.weight_bytes / 1e6:.1f} | {b.activation_bytes / 1e6:.1f} | {b.sent_bytes / 1e6:.2f} | '
                f'{b.received_bytes / 1e6:.2f} | {b.compute_s * 1e3:.1f} | {b.transfer_s * 1e3:.1f} | '
                f'{opt(b.measured_cpu_s, 1e3, ".1f")} | {opt(b.measured_rss_bytes, 1e-6, ".0f")} | '
                f'{b.energy_j * 1e3:.1f} | {opt(b.measured_energy_j, 1e3, ".1f")} |')
    return '\n'.join(lines)


def plot(results: Sequence[StrategyFigures], title: str, path: Path) -> None:
    """Per-board bars for each strategy: energy, weights, traffic, predicted time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.boards]
    panels = (('energy_j', 1e3, 'energy per frame, mJ (predicted)', True),
              ('weight_bytes', 1e-6, 'weights, MB', False),
              ('traffic', 1e-6, 'sent + received per frame, MB', True),
              ('time_s', 1e3, 'predicted time per frame (CPU + link), ms', True))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.8 / max(1, max(len(r.boards) for r in shown)) if shown else 0.8
    for ax, (key, scale, label, log) in zip(axes.flat, panels, strict=True):
        labelled: set[str] = set()
        for i, r in enumerate(shown):
            for k, b in enumerate(r.boards):
                value = b.sent_bytes + b.received_bytes if key == 'traffic' else getattr(b, key)
                ax.bar(i + k * width, value * scale, width, color=f'C{k}',
                       label=None if b.board in labelled else b.board)
                labelled.add(b.board)
        ax.set_xticks([i + width * (len(r.boards) - 1) / 2 for i, r in enumerate(shown)])
        ax.set_xticklabels([r.strategy for r in shown])
        ax.set_title(label)
        if log:
            ax.set_yscale('log')
    axes[0][0].legend(fontsize='small')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
