"""Per-node time and memory of a model on this machine, and the roofline cost model fitted to it.

``autodice profile`` runs the model under ONNX Runtime profiling in a child process (so its
peak RSS is the session's, not ours), maps the trace back to node ids, and fits a roofline --
``overhead + max(FLOPs / flops_per_s, bytes / bytes_per_s)`` per node -- once. The fitted
:class:`Calibration` is kept in the profile JSON: ``autodice plan`` prices any model with it
without profiling again. A FLOPs-only model was poor here (p90 error 93 %); the bytes term is
what makes batch-1 fully connected layers and element-wise ops come out right.

Two things ONNX Runtime does to the graph shape how the trace maps back:

- It fuses element-wise ops into the Conv/Gemm before them (BN, Relu, a residual Add) and names
  the fused kernel after a tensor (``r2_nchwc`` is the kernel that produces ``r2``). The fused
  chain's time goes to its root, the Conv; :func:`fused_flags` predicts which nodes vanish this
  way, and the roofline prices them at their FLOPs only (their bytes never leave the cache).
- It inserts layout conversions (``ReorderInput``/``ReorderOutput``) named after nothing in the
  model; their time goes to the next kernel that does map back, in execution order.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from autodice_ros.environment import MALLOC_TUNABLES
from autodice_ros.errors import AutodiceError
from autodice_ros.graph.cost import NodeCost, node_costs
from autodice_ros.graph.model import ModelGraph, analyze, load_model
from autodice_ros.graph.weights import read_lean
from autodice_ros.manifest import sha256_file

PROFILE_VERSION = 1
_KERNEL_SUFFIX = '_kernel_time'
_SUFFIX = re.compile(r'_[a-z]+$')
# Ops ONNX Runtime folds into the Conv/Gemm that feeds them (BN, activations, residual adds).
_FUSABLE = frozenset({'BatchNormalization', 'Relu', 'Clip', 'LeakyRelu', 'Sigmoid', 'HardSigmoid',
                      'Add', 'Sum', 'Mul'})
_FUSION_ROOTS = frozenset({'Conv', 'ConvTranspose', 'Gemm', 'MatMul'})
# Weighted log error per e-fold the byte rate strays from the built-in one (see fit_calibration).
_PRIOR_WEIGHT = 0.002
# A kernel's fixed cost is microseconds; a larger fitted value means too few kernels to tell.
_MAX_OVERHEAD_S = 30e-6
# Ops ONNX Runtime removes from the graph.
_REMOVED = frozenset({'Dropout', 'Identity'})


class ProfileError(AutodiceError):
    """A profile JSON cannot be read, or profiling the model failed."""


# -- the cost model ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """This machine's effective rates under ONNX Runtime: the roofline's constants.

    ``op_factor`` scales the time of op types whose kernels run far from the roofline (ORT's LRN
    runs at about 1 GFLOP/s, its Reshape copies nothing); ops the calibration did not see get 1.
    ``overhead_s`` is per kernel (launch and executor gap), ``run_overhead_s`` per session run
    (the Python call).
    """

    flops_per_s: float
    bytes_per_s: float
    overhead_s: float
    run_overhead_s: float = 0.0
    op_factor: dict[str, float] = field(default_factory=dict)
    threads: int = 1
    source: str = ''

    def node_seconds(self, cost: NodeCost, fused: bool = False) -> float:
        """Predicted time of one node; a fused node costs only its arithmetic."""
        if cost.constant:
            return 0.0
        compute = cost.flops / self.flops_per_s
        if fused:
            return compute
        roofline = max(compute, cost.bytes / self.bytes_per_s)
        return self.op_factor.get(cost.op, 1.0) * (self.overhead_s + roofline)

    def seconds(self, costs: Sequence[NodeCost], fused: Sequence[bool]) -> list[float]:
        return [self.node_seconds(c, f) for c, f in zip(costs, fused, strict=True)]


# `plan` without --profile: the nine zoo CNNs' kernels pooled (see profile_model's ``pool``), on
# the machine autodice was developed on (AMD EPYC, 2 cores, ONNX Runtime 1.32, 1 thread). Only
# the ratios between ops carry over to another machine; profile there for its rates.
DEFAULT_CALIBRATION = Calibration(
    flops_per_s=67.8e9, bytes_per_s=8.74e9, overhead_s=35e-6, run_overhead_s=150e-6,
    op_factor={'Add': 0.67, 'AveragePool': 0.96, 'BatchNormalization': 0.63, 'Concat': 0.64,
               'GlobalAveragePool': 0.88, 'LRN': 42.3, 'MaxPool': 1.0, 'Mul': 0.62, 'Relu': 0.22,
               'Reshape': 0.31, 'Softmax': 1.24, 'Transpose': 0.46},
    threads=1, source='built-in (9 zoo CNNs, AMD EPYC, ORT 1.32, 1 thread)')


def fused_flags(graph: ModelGraph) -> list[bool]:
    """Which nodes vanish into another kernel under ONNX Runtime (see the module docstring).

    Element-wise ops (:data:`_FUSABLE`) whose activation input comes from a Conv/Gemm, or from an
    already fused node, that feeds nothing else; and ops ORT removes outright (Dropout, Identity).
    """
    fused = [False] * len(graph.nodes)
    for position, node in enumerate(graph.nodes):
        if graph.constant[position]:
            continue
        if node.op_type in _REMOVED:
            fused[position] = True
            continue
        if node.op_type not in _FUSABLE:
            continue
        for name in node.input:
            if _fusable_input(graph, fused, name):
                fused[position] = True
                break
    return fused


def _fusable_input(graph: ModelGraph, fused: Sequence[bool], name: str) -> bool:
    source = graph.producer.get(name)
    return (source is not None and not graph.constant[source] and name not in graph.outputs
            and len(graph.consumers.get(name, ())) == 1
            and (graph.nodes[source].op_type in _FUSION_ROOTS or fused[source]))


def fusion_roots(graph: ModelGraph, fused: Sequence[bool]) -> list[int]:
    """For each node, the position of the kernel its time is charged to (itself if not fused)."""
    roots = list(range(len(graph.nodes)))
    for position, node in enumerate(graph.nodes):
        if not fused[position]:
            continue
        source = next((graph.producer[n] for n in node.input if _fusable_input(graph, fused, n)), None)
        if source is None:          # removed ops with no fusable producer: charge their input's producer
            source = next((graph.producer[n] for n in node.input if n in graph.producer), position)
        roots[position] = roots[source]
    return roots


@dataclass(frozen=True)
class Kernel:
    """One kernel as ONNX Runtime runs it: a root node plus the nodes fused into it."""

    op: str
    flops: float                # the root's
    fused_flops: float          # the fused nodes'
    bytes: float                # the root's inputs, weights and outputs
    seconds: float              # measured


def timed_kernels(costs: Sequence[NodeCost], fused: Sequence[bool], roots: Sequence[int],
            seconds: Sequence[float]) -> list[Kernel]:
    """The timed kernels of one model (roots not themselves fused, with time measured)."""
    units: dict[int, list[int]] = {}
    for position, root in enumerate(roots):
        if not costs[position].constant:
            units.setdefault(root, []).append(position)
    return [Kernel(costs[root].op, costs[root].flops, sum(costs[p].flops for p in members if p != root),
                   costs[root].bytes, sum(seconds[p] for p in members))
            for root, members in units.items()
            if not fused[root] and sum(seconds[p] for p in members) > 0]


def profile_kernels(profile: Profile) -> list[Kernel]:
    """The kernels of a saved profile, to fit one calibration to several models."""
    by_id = {n.id: n for n in profile.nodes}
    found: dict[str, list[NodeTime]] = {}
    for node in profile.nodes:
        found.setdefault(node.root, []).append(node)
    return [Kernel(by_id[root].op, by_id[root].flops, sum(n.flops for n in members if n.id != root),
                   by_id[root].bytes, sum(n.seconds for n in members))
            for root, members in found.items() if not by_id[root].fused and by_id[root].seconds > 0]


def fit_calibration(timed: Sequence[Kernel], threads: int) -> Calibration:
    """Fit the roofline's constants to measured per-kernel times.

    Kernels are counted as ONNX Runtime runs them: a root plus the nodes fused into it. The two
    rates and the per-kernel overhead are fitted on the Conv/Gemm kernels -- the roofline's home
    ground, where 3x3 convolutions pin the FLOP rate and batch-1 fully connected layers the byte
    rate -- by a coarse-to-fine grid search minimising the time-weighted absolute log error (big
    kernels dominate stage times; a log error treats over- and under-prediction alike). A weak
    prior holds the byte rate near the built-in one where the kernels cannot tell it (ResNet50
    alone has no large fully connected layer and drifted to a quarter of it). Every other op
    type then gets its factor: the time-weighted geometric mean of measured / roofline.
    """
    ops = np.array([k.op for k in timed])
    root_flops, fused_flops, nbytes, measured = (np.array([getattr(k, name) for k in timed], float)
                                                 for name in ('flops', 'fused_flops', 'bytes', 'seconds'))
    core = np.isin(ops, list(_FUSION_ROOTS))
    if core.sum() < 2:
        raise ProfileError(f'only {int(core.sum())} Conv/Gemm kernels timed; too few to fit the cost model')
    weight = measured[core] / measured[core].sum()

    def error(peak: np.ndarray, bandwidth: np.ndarray, overhead: np.ndarray) -> np.ndarray:
        """Weighted log error for every combination of the three grids (axes 0, 1, 2)."""
        p, b, o = peak[:, None, None, None], bandwidth[None, :, None, None], overhead[None, None, :, None]
        predicted = o + np.maximum(root_flops[core] / p, nbytes[core] / b) + fused_flops[core] / p
        prior = _PRIOR_WEIGHT * np.abs(np.log(b[..., 0] / DEFAULT_CALIBRATION.bytes_per_s))
        return np.asarray(np.sum(weight * np.abs(np.log(predicted / measured[core])), axis=-1) + prior)

    grids = [np.logspace(8, 13, 41), np.logspace(8, 12, 33),
             np.concatenate([[0.0], np.geomspace(1e-7, _MAX_OVERHEAD_S, 13)])]
    for _ in range(5):
        errors = error(*grids)
        i, j, k = np.unravel_index(int(np.argmin(errors)), errors.shape)
        peak, bandwidth, overhead = float(grids[0][i]), float(grids[1][j]), float(grids[2][k])
        grids = [np.geomspace(peak / 1.4, peak * 1.4, 21), np.geomspace(bandwidth / 1.4, bandwidth * 1.4, 21),
                 np.linspace(overhead * 0.6, min(overhead * 1.4 + 1e-7, _MAX_OVERHEAD_S), 21)]
    ratio = measured / (overhead + np.maximum(root_flops / peak, nbytes / bandwidth) + fused_flops / peak)
    op_factor: dict[str, float] = {}
    for op in sorted({str(op) for op in ops[~core]}):
        mask = ops == op
        mean = np.exp(np.average(np.log(ratio[mask]), weights=measured[mask]))
        op_factor[op] = round(float(np.clip(mean, 0.01, 100.0)), 4)
    return Calibration(flops_per_s=peak, bytes_per_s=bandwidth, overhead_s=overhead,
                       op_factor=op_factor, threads=threads)


# -- the profile ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeTime:
    """One node: measured median time, its kernel's plus the executor's gap after it (fused
    nodes 0: their time is in their root's), and the calibrated roofline's prediction."""

    id: str
    op: str
    seconds: float
    predicted_s: float
    flops: int
    bytes: int
    fused: bool
    root: str                   # the node whose kernel this node's time is in (itself if unfused)


@dataclass
class Profile:
    """What ``autodice profile`` measured, and the calibration fitted to it."""

    model: str
    sha256: str
    threads: int
    runs: int
    run_s: float                    # median time of a whole run (ORT's model_run; CPU time at 1 thread)
    kernels_s: float                # median sum of the node kernels of a run
    weight_bytes: int
    activation_peak_bytes: int      # ORT's arena high-water mark during a run
    session_rss_bytes: int          # peak RSS of the profiling process minus its RSS before the session
    peak_rss_bytes: int
    calibration: Calibration
    nodes: list[NodeTime] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    version: int = PROFILE_VERSION

    def measured_seconds(self) -> dict[str, float]:
        return {n.id: n.seconds for n in self.nodes}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def save_profile(profile: Profile, path: Path) -> None:
    path.write_text(json.dumps(profile.to_json(), indent=1) + '\n')


def load_profile(path: Path) -> Profile:
    """Read a profile JSON written by :func:`save_profile`; errors name the file and field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f'{path}: cannot read: {exc.strerror or exc}') from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f'{path}: not JSON: {exc}') from exc
    return profile_from_json(data, str(path))


def profile_from_json(data: Any, path: str) -> Profile:
    """A :class:`Profile` from its JSON data (``path`` names it in errors)."""
    if not isinstance(data, dict) or data.get('version') != PROFILE_VERSION:
        found = data.get('version') if isinstance(data, dict) else None
        raise ProfileError(f'{path}: field "version" is {found!r}'
                           f', expected {PROFILE_VERSION} (write it with `autodice profile`)')
    try:
        calibration = Calibration(**data.pop('calibration'))
        nodes = [NodeTime(**n) for n in data.pop('nodes')]
        return Profile(calibration=calibration, nodes=nodes, **data)
    except (KeyError, TypeError) as exc:
        raise ProfileError(f'{path}: malformed profile: {exc}') from exc


def _machine() -> dict[str, str]:
    import onnxruntime as ort
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as info:
            cpu = next((line.split(':', 1)[1].strip() for line in info if line.startswith('model name')), cpu)
    except OSError:
        pass
    return {'cpu': cpu, 'cores': str(os.cpu_count()), 'onnxruntime': ort.__version__,
            'python': platform.python_version()}


def profiling_target(path: Path, graph: ModelGraph, workdir: Path) -> Path:
    """The model file to profile: ``path`` if every node has a name, else a copy in ``workdir``
    whose unnamed nodes are named by their id, so every kernel in the trace maps back."""
    if all(node.name for node in graph.nodes):
        return path
    model = load_model(path)
    for node in model.graph.node:
        if not node.name:
            node.name = node.output[0]
    named = workdir / 'named.onnx'
    onnx.save(model, str(named))
    return named


def profiling_session(path: Path, threads: int, workdir: Path) -> Any:
    """An ORT session with profiling on, and otherwise the settings every stage runs with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, 'trace')
    return ort.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])


@dataclass
class Measured:
    """What runs of a profiling session gave: ORT's trace, and each run's wall and CPU time."""

    trace: list[dict[str, Any]]
    wall_s: list[float]
    cpu_s: list[float]
    rss_before: int = 0
    peak_rss: int = 0


def timed_run(session: Any, feeds: dict[str, np.ndarray], measured: Measured) -> None:
    """One run, its wall and calling-thread CPU time appended to ``measured``."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    session.run(None, feeds)
    measured.wall_s.append(time.perf_counter() - start)
    measured.cpu_s.append(time.thread_time() - start_cpu)


def _kernel_node(name: str, graph: ModelGraph) -> int | None:
    """Position of the node an ORT kernel name stands for, or ``None`` (a layout kernel).

    ORT names a fused kernel after its first node with a ``fused `` prefix, and a kernel it
    rewrote after the tensor it produces plus lowercase suffixes (``r2_nchwc``, ``r8_bn_nchwc``).
    """
    name = name.removeprefix('fused ')
    while True:
        position = graph.resolve(name)
        if position is None:
            position = graph.producer.get(name)
        if position is not None:
            return position
        stripped = _SUFFIX.sub('', name)
        if stripped == name:
            return None
        name = stripped


def _per_run(trace: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Kernel events grouped by run (ORT's ``model_run`` spans), in execution order."""
    spans = sorted((e['ts'], e['ts'] + e['dur']) for e in trace
                   if e.get('cat') == 'Session' and e.get('name') == 'model_run')
    kernels = sorted((e for e in trace if e.get('cat') == 'Node' and e['name'].endswith(_KERNEL_SUFFIX)),
                     key=lambda e: e['ts'])
    runs: list[list[dict[str, Any]]] = [[] for _ in spans]
    for event in kernels:
        for index, (start, stop) in enumerate(spans):
            if start <= event['ts'] <= stop:
                runs[index].append(event)
                break
    return runs


def node_seconds_from_trace(trace: list[dict[str, Any]], graph: ModelGraph, roots: Sequence[int],
                            warmup: int, scales: Sequence[float] | None = None
                            ) -> tuple[list[float], float, float, int, int]:
    """Median per-node seconds over the timed runs, median run and kernel-sum seconds, arena peak
    and the number of kernels a run executes. ``scales`` (per run, warm-up included) turn the
    trace's wall times into CPU times (see :func:`profile_model`)."""
    runs = _per_run(trace)[warmup:]
    if not runs:
        raise ProfileError('the ONNX Runtime trace holds no timed runs')
    factors = list(scales[warmup:]) if scales is not None else [1.0] * len(runs)
    per_node: list[list[float]] = [[] for _ in graph.nodes]
    kernel_sums = []
    arena_peak = 0
    for events, factor in zip(runs, factors, strict=True):
        positions = [_kernel_node(e['name'][:-len(_KERNEL_SUFFIX)], graph) for e in events]
        charged = [0.0] * len(graph.nodes)
        pending = 0.0
        for event, position in zip(events, positions, strict=True):
            seconds = event['dur'] * 1e-6 * factor
            arena_peak = max(arena_peak, int(event.get('args', {}).get('mem_in_use_peak', 0) or 0))
            if position is None:
                pending += seconds
                continue
            charged[roots[position]] += seconds + pending
            pending = 0.0
        if pending:     # trailing layout kernels: charge the last node that mapped back
            last = next((p for p in reversed(positions) if p is not None), None)
            if last is not None:
                charged[roots[last]] += pending
        for position, seconds in enumerate(charged):
            per_node[position].append(seconds)
        kernel_sums.append(sum(e['dur'] for e in events) * 1e-6 * factor)
    spans = [e['dur'] * 1e-6 for e in trace if e.get('cat') == 'Session' and e.get('name') == 'model_run']
    run_spans = [span * factor for span, factor in zip(spans[warmup:], factors, strict=True)]
    # The machine speeds up and slows down between runs (other processes, shared caches): take
    # each node's median share of its run, scaled to the median run, so a slow run moves every
    # node alike and the nodes still add up to the run.
    totals = [sum(times[r] for times in per_node) for r in range(len(runs))]
    shares = [statistics.median(t / total for t, total in zip(times, totals, strict=True) if total > 0)
              for times in per_node]
    medians = [share / (sum(shares) or 1.0) * statistics.median(totals) for share in shares]
    return (medians, statistics.median(run_spans), statistics.median(kernel_sums), arena_peak,
            len(runs[-1]))


def stage_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment stage nodes run in, as far as timing goes: glibc keeps multi-MB output
    buffers instead of returning them to the OS after every run (a few per cent per cut)."""
    env = dict(base)
    env.setdefault('GLIBC_TUNABLES', MALLOC_TUNABLES)
    return env


def _run_child(path: Path, threads: int, runs: int, workdir: Path) -> dict[str, Any]:
    command = [sys.executable, '-m', 'autodice_ros.profile', str(path), str(threads), str(runs),
               str(workdir)]
    done = subprocess.run(command, env=stage_env(os.environ), capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ProfileError(f'{path}: profiling under ONNX Runtime failed: {lines[-1] if lines else "?"}')
    return dict(json.loads(done.stdout))


def profile_model(path: Path, threads: int = 1, runs: int = 10, warmup: int = 3,
                  pool: Sequence[Profile] = ()) -> Profile:
    """Profile the model at ``path`` in a child process: ``warmup`` untimed runs, ``runs`` timed.

    The calibration is fitted on this model's kernels plus those of the ``pool`` profiles (same
    machine and threads): one model rarely pins both rates -- ResNet50 has no large fully
    connected layer to show the byte rate, VGG19 has -- so a machine is best calibrated once
    on a few models together.
    """
    path = Path(path)
    graph = analyze(read_lean(path).model, path)      # weights stay on disk
    with tempfile.TemporaryDirectory(prefix='autodice-profile-') as tmp:
        target = profiling_target(path, graph, Path(tmp))
        child = _run_child(target, threads, warmup + runs, Path(tmp))
        measured = Measured(json.loads(Path(child['trace']).read_text()), child['wall_s'], child['cpu_s'],
                            child['rss_before'], child['peak_rss'])
    return profile_from(path, graph, measured, threads, warmup, pool)


def profile_from(path: Path, graph: ModelGraph, measured: Measured, threads: int, warmup: int,
                 pool: Sequence[Profile] = ()) -> Profile:
    """The :class:`Profile` of ``graph`` (the model at ``path``) from a profiling session's runs."""
    for other in pool:
        if other.threads != threads:
            raise ProfileError(f'{other.model}: profiled with {other.threads} thread(s), not {threads}; '
                               f'pool only profiles made with the same threads')
    costs = node_costs(graph)
    fused = fused_flags(graph)
    roots = fusion_roots(graph, fused)
    # With one thread ORT computes on the calling thread, whose CPU time other processes sharing
    # the cores inflate far less than its wall time (2x here): scale each run's kernel times by
    # its CPU / wall ratio. Several threads: wall time as measured.
    scales = [cpu / wall if threads == 1 and wall > 0 else 1.0
              for cpu, wall in zip(measured.cpu_s, measured.wall_s, strict=True)]
    seconds, run_s, kernels_s, arena_peak, kernels = node_seconds_from_trace(measured.trace, graph, roots,
                                                                             warmup, scales)
    pooled = [k for other in pool for k in profile_kernels(other)]
    fitted = fit_calibration(timed_kernels(costs, fused, roots, seconds) + pooled, threads)
    # What a run costs beyond its kernels: the executor's gap between kernels, and the Python call.
    gap = max(0.0, run_s - kernels_s) / max(1, kernels)
    call_s = statistics.median((measured.cpu_s if threads == 1 else measured.wall_s)[warmup:])
    names = ' + '.join([path.name, *(Path(other.model).name for other in pool)])
    calibration = replace(fitted, overhead_s=fitted.overhead_s + gap, run_overhead_s=max(0.0, call_s - run_s),
                          source=f'{names} on {platform.node()}')
    predicted = calibration.seconds(costs, fused)
    seconds = [t + gap if t > 0 else 0.0 for t in seconds]
    nodes = [NodeTime(id=c.id, op=c.op, seconds=s, predicted_s=p, flops=c.flops, bytes=c.bytes, fused=f,
                      root=graph.ids[r])
             for c, s, p, f, r in zip(costs, seconds, predicted, fused, roots, strict=True) if not c.constant]
    return Profile(
        model=str(path), sha256=sha256_file(path), threads=threads, runs=len(measured.wall_s) - warmup,
        run_s=run_s, kernels_s=kernels_s, weight_bytes=sum(c.param_bytes for c in costs),
        activation_peak_bytes=arena_peak, session_rss_bytes=measured.peak_rss - measured.rss_before,
        peak_rss_bytes=measured.peak_rss, calibration=calibration, nodes=nodes, machine=_machine())


# -- the child process ---------------------------------------------------------------------------

def _status_bytes(field_name: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field_name + ':'):
                return int(line.split()[1]) * 1024
    return 0


_ORT_TYPES = {'tensor(float)': np.float32, 'tensor(double)': np.float64, 'tensor(float16)': np.float16,
              'tensor(int64)': np.int64, 'tensor(int32)': np.int32, 'tensor(int8)': np.int8,
              'tensor(uint8)': np.uint8, 'tensor(bool)': np.bool_}


def random_feeds(session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every input of an ORT session (symbolic dimensions as 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
        dtype = np.dtype(_ORT_TYPES.get(value.type, np.float32))
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def _child(path: str, threads: int, runs: int, workdir: str) -> int:
    rss_before = _status_bytes('VmRSS')
    session = profiling_session(Path(path), threads, Path(workdir))
    feeds = random_feeds(session)
    measured = Measured([], [], [])
    for _ in range(runs):
        timed_run(session, feeds, measured)
    json.dump({'trace': session.end_profiling(), 'wall_s': measured.wall_s, 'cpu_s': measured.cpu_s,
               'rss_before': rss_before, 'peak_rss': _status_bytes('VmHWM')}, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
