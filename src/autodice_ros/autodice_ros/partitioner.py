"""The automatic partitioner: the K-stage layer-wise mapping with the smallest bottleneck stage.

A pipeline's throughput is set by its slowest stage, so the objective is the bottleneck, not the
sum. A stage is a contiguous range ``[i, j)`` of the compute nodes in topological order; its time
is what its node spends per frame::

    run overhead + sum of its nodes' predicted times + boundary + bytes crossing into it / link rate

The transfer counts every tensor crossing the cut before it -- produced before ``i`` and
consumed at or after ``i`` -- so a residual or inception block cut in the middle pays for all its
branches. It is charged to the receiving stage because one ROS node decodes and computes in the
same callback, one after the other. The boundary term is what a cut costs even on one machine:
each crossing tensor is read and written once more on each side (ONNX Runtime converts it
out of and into its blocked layout; the codec encodes and decodes it), plus a kernel's overhead;
and an element-wise op cut off from the Conv it fused into runs on its own in the next stage.
Two cuts through ResNet50 residual blocks cost 2-4 % more than the whole model here, two cuts
between blocks 0-2 %. The first stage's
input comes from the camera head on its own board and costs no link time. A stage's memory is
its weights plus its peak activations: the inputs it receives (held for the whole run) plus, at
each node, the tensors it produced that are still needed. Stages above the memory cap are not
allowed.

Dynamic programming over the order (:func:`solve`) is exact for this objective: ``best[k][j]``,
the smallest bottleneck of ``k`` stages covering the first ``j`` nodes, is the minimum over ``i``
of ``max(best[k-1][i], stage(i, j))``. Ties -- bottlenecks within 1 % (:data:`SLACK`) -- go to
the plan with the smaller total time (less traffic). One sweep over ``j`` keeps every stage's
peak activation up to date in O(n) per step, so the whole search is O(K n^2) with numpy
vectors, well under a second for DenseNet121.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from autodice_ros.errors import MappingError
from autodice_ros.graph.cost import NodeCost, node_costs
from autodice_ros.graph.model import ModelGraph, analyze
from autodice_ros.mapping import Mapping, PartitionSpec, build_mapping
from autodice_ros.profile import (
    DEFAULT_CALIBRATION,
    Calibration,
    Profile,
    fused_flags,
    fusion_roots,
    load_profile,
)

_TIE = 1e-9        # seconds: bottlenecks closer than this are equal, the smaller total wins
# Plans within this fraction of the best bottleneck count as ties: at most 1 % of throughput buys
# fewer, smaller crossing tensors (ResNet50: cuts between residual blocks instead of inside).
SLACK = 0.01


@dataclass(frozen=True)
class Tensor:
    """An activation between compute nodes (positions in the chain; -1 = a model input)."""

    name: str
    producer: int
    last_use: int           # last consuming compute node; -1 if none
    nbytes: int
    output: bool = False    # a model output: kept to the end of its stage


@dataclass
class Chain:
    """Compute nodes in topological order with their predicted time, weights, and the tensors
    between them: everything the search needs, and nothing ONNX (tests build synthetic ones)."""

    ids: list[str]
    seconds: np.ndarray                 # per node
    param_bytes: np.ndarray             # per node
    tensors: list[Tensor]
    run_overhead_s: float = 0.0         # per stage: one more session run
    per_tensor_s: float = 0.0           # per tensor crossing a cut, on each side of it
    per_byte_s: float = 0.0             # per byte crossing a cut, on each side of it
    unfused_s: np.ndarray | None = None     # per cut: what the stage after it loses in fusions

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.seconds = np.asarray(self.seconds, float)
        self.param_bytes = np.asarray(self.param_bytes, float)
        diff = np.zeros(n + 2)
        for t in self.tensors:
            if t.last_use > t.producer:         # crosses cuts producer+1 .. last_use
                diff[t.producer + 1] += t.nbytes
                diff[t.last_use + 1] -= t.nbytes
        self.crossing_bytes = np.cumsum(diff)[:n + 1]      # per cut 0..n (cut c: before node c)
        count = np.zeros(n + 2)
        for t in self.tensors:
            if t.last_use > t.producer:
                count[t.producer + 1] += 1
                count[t.last_use + 1] -= 1
        # What one side of a cut pays for the tensors crossing it; the model's own input and
        # output (cuts 0 and n) cost the unsplit model the same.
        self.boundary_s = self.per_tensor_s * np.cumsum(count)[:n + 1] + self.per_byte_s * self.crossing_bytes
        self.boundary_s[0] = self.boundary_s[n] = 0.0
        self._entry_s = self.boundary_s + (np.zeros(n + 1) if self.unfused_s is None
                                           else np.asarray(self.unfused_s, float))
        self._time_prefix = np.concatenate([[0.0], np.cumsum(self.seconds)])
        self._param_prefix = np.concatenate([[0.0], np.cumsum(self.param_bytes)])

    def __len__(self) -> int:
        return len(self.ids)

    def crossing(self, cut: int) -> list[Tensor]:
        """Tensors crossing the cut before node ``cut``: produced before it, consumed at or after."""
        return [t for t in self.tensors if t.producer < cut <= t.last_use]

    def compute_s(self, start: int, stop: int) -> float:
        return float(self._time_prefix[stop] - self._time_prefix[start])

    def stage_s(self, start: int, stop: int, link_rate: float | None = None) -> tuple[float, float, float]:
        """(compute, boundary, transfer) seconds of the stage ``[start, stop)``."""
        boundary = float(self._entry_s[start] + self.boundary_s[stop])
        transfer = float(self.crossing_bytes[start]) / link_rate if link_rate and start > 0 else 0.0
        return self.compute_s(start, stop), boundary, transfer

    def weight_bytes(self, start: int, stop: int) -> int:
        return int(self._param_prefix[stop] - self._param_prefix[start])

    def sweep(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """For each stop ``j`` = 1..n: stage compute seconds and memory bytes for every start ``i < j``.

        Peak activations of ``[i, j)``: at node ``t`` the live tensors are those produced in
        ``[i, t]`` still needed at ``t`` -- a suffix sum over producers, kept incrementally.
        """
        n = len(self.ids)
        made: list[list[Tensor]] = [[] for _ in range(n)]
        dying: list[list[Tensor]] = [[] for _ in range(n)]
        for x in self.tensors:
            if x.producer >= 0:
                made[x.producer].append(x)
                if not x.output:
                    dying[max(x.last_use, x.producer)].append(x)
        alive = np.zeros(n)         # bytes produced at p, still alive
        peak = np.zeros(n)
        for step in range(n):
            alive[step] = sum(x.nbytes for x in made[step])
            live = np.cumsum(alive[step::-1])[::-1]     # live[i] = sum(alive[i..step])
            np.maximum(peak[:step + 1], live, out=peak[:step + 1])
            for x in dying[step]:
                alive[x.producer] -= x.nbytes
            j = step + 1
            starts = slice(0, j)
            compute = self._time_prefix[j] - self._time_prefix[starts]
            memory = (self._param_prefix[j] - self._param_prefix[starts]) + self.crossing_bytes[starts] \
                + peak[starts]
            yield j, compute, memory

    def memory_bytes(self, start: int, stop: int) -> tuple[int, int]:
        """(weights, peak activations) of the stage ``[start, stop)``."""
        for j, _, memory in self.sweep():
            if j == stop:
                weights = self.weight_bytes(start, stop)
                return weights, int(memory[start]) - weights
        raise ValueError(f'stop {stop} is outside the chain of {len(self)} nodes')


def _fusion_anchors(graph: ModelGraph) -> dict[int, int]:
    """For each fused node, the earliest node a cut after which un-fuses it.

    A fused node stays fused only if its whole chain, back to its Conv, and every other input
    it reads are computed in its own sub-model: ONNX Runtime adds a residual in place into the
    Conv's output buffer and will not do so with a sub-model's input (seen on ResNet50: the
    first block after a cut runs its Sum and Relu as separate kernels).
    """
    fused = fused_flags(graph)
    roots = fusion_roots(graph, fused)
    anchors: dict[int, int] = {}
    for p, node in enumerate(graph.nodes):
        if not fused[p] or graph.constant[p] or roots[p] == p:
            continue
        anchor = roots[p]
        for name in node.input:
            q = graph.producer.get(name)
            if q is not None and not graph.constant[q]:     # its own chain: as far back as that goes
                anchor = min(anchor, anchors.get(q, q) if roots[q] == roots[p] else q)
        anchors[p] = anchor
    return anchors


def chain_from_graph(graph: ModelGraph, seconds: Sequence[float], costs: Sequence[NodeCost] | None = None,
                     calibration: Calibration | None = None) -> Chain:
    """The chain of ``graph``'s compute nodes; ``seconds`` per node of ``graph.nodes``, per-stage
    and per-cut costs from ``calibration`` (none without)."""
    costs = node_costs(graph) if costs is None else costs
    positions = graph.compute_nodes()
    index = {p: i for i, p in enumerate(positions)}
    tensors = []
    sources = [(name, -1) for name in graph.inputs] + [
        (name, index[p]) for p in positions for name in graph.nodes[p].output if name]
    for name, producer in sources:
        uses = [index[c] for c in graph.consumers.get(name, ()) if c in index]
        found = graph.types.get(name)
        nbytes = found.nbytes if found is not None else 0
        tensors.append(Tensor(name, producer, max(uses, default=-1), nbytes, name in graph.outputs))
    unfused = np.zeros(len(positions) + 2)
    if calibration is not None:
        for p, anchor in _fusion_anchors(graph).items():        # a cut in (anchor, p]: p runs alone
            extra = calibration.node_seconds(costs[p]) - calibration.node_seconds(costs[p], fused=True)
            unfused[index[anchor] + 1] += extra
            unfused[index[p] + 1] -= extra
    return Chain(ids=[graph.ids[p] for p in positions], seconds=np.array([seconds[p] for p in positions]),
                 param_bytes=np.array([costs[p].param_bytes for p in positions]), tensors=tensors,
                 unfused_s=np.cumsum(unfused)[:len(positions) + 1],
                 run_overhead_s=calibration.run_overhead_s if calibration else 0.0,
                 per_tensor_s=calibration.overhead_s if calibration else 0.0,
                 per_byte_s=2.0 / calibration.bytes_per_s if calibration else 0.0)


# -- the search ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Solution:
    starts: tuple[int, ...]         # first node of each stage; stage k is [starts[k], starts[k+1])
    bottleneck_s: float


def _stage_time(chain: Chain, compute: np.ndarray, link_rate: float | None) -> np.ndarray:
    """Times of the stages ``[i, j)`` for every ``i < j`` (``j = len(compute)``)."""
    j = len(compute)
    transfer = np.zeros(j)
    if link_rate:
        transfer[1:] = chain.crossing_bytes[1:j] / link_rate
    return chain.run_overhead_s + compute + chain._entry_s[:j] + chain.boundary_s[j] + transfer


def solve(chain: Chain, boards: int, mem_cap: float | None = None, link_rate: float | None = None,
          objective: str = 'time', slack: float = 0.0) -> Solution | None:
    """The min-max split of ``chain`` into ``boards`` non-empty stages (``None``: infeasible).

    Exact with ``slack=0``; otherwise, at each step, bottlenecks within ``slack`` (a fraction)
    of the best tie and the smaller total wins. ``objective='memory'`` minimises the largest
    stage memory instead, ignoring the cap: the smallest cap any split could meet.
    """
    n = len(chain)
    if not 1 <= boards <= n:
        raise MappingError(f'cannot cut {n} nodes into {boards} non-empty stages')
    best = np.full((boards + 1, n + 1), np.inf)
    total = np.full((boards + 1, n + 1), np.inf)
    choice = np.zeros((boards + 1, n + 1), int)
    best[0, 0] = total[0, 0] = 0.0
    for j, compute, memory in chain.sweep():
        cost = memory.astype(float) if objective == 'memory' else _stage_time(chain, compute, link_rate)
        allowed = np.ones(j, bool) if mem_cap is None or objective == 'memory' else memory <= mem_cap
        stage = np.where(allowed, cost, np.inf)
        for k in range(1, min(boards, j) + 1):
            bottleneck = np.maximum(best[k - 1, :j], stage)
            low = bottleneck.min()
            if not np.isfinite(low):
                continue
            near = np.flatnonzero(bottleneck <= low * (1 + slack) + _TIE)
            sums = total[k - 1, near] + stage[near]
            pick = int(near[np.argmin(sums)])
            best[k, j], total[k, j], choice[k, j] = bottleneck[pick], total[k - 1, pick] + stage[pick], pick
    if not np.isfinite(best[boards, n]):
        return None
    starts = []
    j = n
    for k in range(boards, 0, -1):
        j = int(choice[k, j])
        starts.append(j)
    return Solution(tuple(reversed(starts)), float(best[boards, n]))


# -- plans ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan, with what the cost model predicts for it (seconds per frame)."""

    name: str
    board: str
    key: str                        # its AutoDiCE mapping.json key
    first: str
    last: str
    nodes: tuple[str, ...]
    compute_s: float
    boundary_s: float               # crossing tensors read and written once more at both ends, and
                                    # element-wise ops cut off from the Conv they fused into
    transfer_s: float
    time_s: float                   # run overhead + compute + boundary + transfer
    weight_bytes: int
    activation_bytes: int
    inputs: tuple[str, ...]         # tensors crossing into it
    input_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


@dataclass(frozen=True)
class Plan:
    """A partitioner result: the stages, and what they were priced with."""

    stages: tuple[StagePlan, ...]
    bottleneck_s: float
    cost_source: str                # 'measured (<profile>)' or 'roofline (<calibration source>)'
    link_rate: float | None
    mem_cap: float | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def specs(self) -> list[PartitionSpec]:
        return [PartitionSpec(s.name, s.board, s.nodes, key=s.key) for s in self.stages]


def node_seconds(graph: ModelGraph, costs: Sequence[NodeCost], profile: Profile | None = None,
                 cost: str = 'auto') -> tuple[list[float], Calibration, str]:
    """Predicted seconds per node of ``graph.nodes``, the calibration, and where they came from.

    ``cost``: ``measured`` uses the profile's per-node times (it must be of this model),
    ``roofline`` its calibration (or the built-in one without a profile); ``auto`` prefers the
    roofline, which prices fused chains split by a cut sensibly (see :mod:`autodice_ros.profile`).
    """
    calibration: Calibration = profile.calibration if profile is not None else DEFAULT_CALIBRATION
    if cost == 'measured':
        if profile is None:
            raise MappingError('cost model "measured" needs a profile (autodice profile MODEL -o JSON)')
        measured = profile.measured_seconds()
        missing = [graph.ids[p] for p in graph.compute_nodes() if graph.ids[p] not in measured]
        if missing:
            raise MappingError(f'{profile.model}: the profile has no time for node {missing[0]!r} of '
                               f'{graph.where}; profile this model')
        seconds = [0.0 if graph.constant[p] else measured[graph.ids[p]] for p in range(len(graph.nodes))]
        return seconds, calibration, f'measured ({profile.model})'
    if cost not in ('auto', 'roofline'):
        raise MappingError(f'unknown cost model {cost!r}; expected auto, measured or roofline')
    return calibration.seconds(costs, fused_flags(graph)), calibration, \
        f'roofline ({calibration.source or "built-in"})'


def priced_chain(graph: ModelGraph, profile: Profile | None = None, cost: str = 'auto') -> tuple[Chain, str]:
    """``graph``'s chain priced by a cost model (see :func:`node_seconds`), and its name."""
    costs = node_costs(graph)
    seconds, calibration, source = node_seconds(graph, costs, profile, cost)
    return chain_from_graph(graph, seconds, costs, calibration), source


def plan(graph: ModelGraph, boards: int, mem_cap: float | None = None, link_rate: float | None = None,
         profile: Profile | None = None, cost: str = 'auto', slack: float = SLACK) -> Plan:
    """The best ``boards``-stage layer-wise plan of ``graph`` (see the module docstring)."""
    chain, source = priced_chain(graph, profile, cost)
    if not 1 <= boards <= len(chain):
        raise MappingError(f'{graph.where}: --boards {boards}: the model has {len(chain)} compute '
                           f'nodes; choose 1..{len(chain)}')
    solution = solve(chain, boards, mem_cap, link_rate, slack=slack)
    if solution is None:
        smallest = solve(chain, boards, objective='memory')
        assert smallest is not None         # without a cap every split is feasible
        raise MappingError(f'{graph.where}: no {boards}-stage split fits --mem-cap {mem_cap or 0:.0f} bytes '
                           f'({(mem_cap or 0) / 1e6:.1f} MB of weights + peak activations per stage); '
                           f'the smallest feasible cap is {smallest.bottleneck_s:.0f} bytes '
                           f'({smallest.bottleneck_s / 1e6:.1f} MB)')
    return describe(chain, solution.starts, source, link_rate, mem_cap)


def describe(chain: Chain, starts: Sequence[int], source: str, link_rate: float | None = None,
             mem_cap: float | None = None) -> Plan:
    """The plan cutting ``chain`` before each of ``starts`` (the first is 0), priced by ``chain``."""
    bounds = [*starts, len(chain)]
    stages = []
    for k in range(len(starts)):
        start, stop = bounds[k], bounds[k + 1]
        inputs = chain.crossing(start)
        compute, boundary, transfer = chain.stage_s(start, stop, link_rate)
        weights, activations = chain.memory_bytes(start, stop)
        stages.append(StagePlan(
            name=f'stage{k}', board=f'board{k}', key=f'board{k}_cpu0', first=chain.ids[start],
            last=chain.ids[stop - 1], nodes=tuple(chain.ids[start:stop]), compute_s=compute,
            boundary_s=boundary, transfer_s=transfer,
            time_s=chain.run_overhead_s + compute + boundary + transfer, weight_bytes=weights,
            activation_bytes=activations, inputs=tuple(t.name for t in inputs),
            input_bytes=sum(t.nbytes for t in inputs)))
    return Plan(tuple(stages), max(s.time_s for s in stages), source, link_rate, mem_cap)


def plan_yaml(result: Plan, mapping: Mapping, model: str) -> str:
    """``mapping`` in our YAML form with the plan's prediction as comments (the reader skips them)."""
    from autodice_ros.mapping import to_yaml

    link = f'{result.link_rate / 1e6:g} MB/s' if result.link_rate else 'free (no --link)'
    cap = f'{result.mem_cap / 1e6:g} MB' if result.mem_cap else 'none'
    lines = [f'# autodice plan of {model}: {len(result.stages)} stage(s), bottleneck '
             f'{result.bottleneck_s * 1e3:.2f} ms per frame',
             f'# cost model: {result.cost_source}; link: {link}; memory cap per stage: {cap}']
    notes = {s.name: (f'# {s.name}: predicted {s.time_s * 1e3:.2f} ms (compute {s.compute_s * 1e3:.2f} + cut '
                      f'{s.boundary_s * 1e3:.2f} + transfer {s.transfer_s * 1e3:.2f}); memory '
                      f'{s.memory_bytes / 1e6:.1f} MB (weights {s.weight_bytes / 1e6:.1f} + activations '
                      f'{s.activation_bytes / 1e6:.1f}); receives {len(s.inputs)} tensor(s), '
                      f'{s.input_bytes / 1e6:.3f} MB: {", ".join(s.inputs)}')
             for s in result.stages}
    for line in to_yaml(mapping).splitlines():
        if line.startswith('- name: ') and line[len('- name: '):].strip() in notes:
            lines.append(notes[line[len('- name: '):].strip()])
        lines.append(line)
    return '\n'.join(lines) + '\n'


def plan_mapping(model: onnx.ModelProto | ModelGraph, boards: int, mem_cap: float | None = None,
                 link_rate: float | None = None, profile: Profile | str | Path | None = None,
                 cost: str = 'auto') -> Mapping:
    """The partitioner's plan as a validated :class:`Mapping` (what ``split --boards K`` uses).

    Pass the :class:`ModelGraph` where one is already built, to skip a second analysis.
    """
    graph = model if isinstance(model, ModelGraph) else analyze(model)
    if isinstance(profile, (str, Path)):
        profile = load_profile(Path(profile))
    result = plan(graph, boards, mem_cap, link_rate, profile, cost)
    return build_mapping(result.specs(), graph, f'plan of {graph.where} ({boards} boards)')

