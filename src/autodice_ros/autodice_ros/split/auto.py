"""``split --strategy S --boards K``: an even plan for each partitioning strategy, chosen from the
graph alone (the built-in roofline prices the layers).

Partitions are ``board0`` .. ``board<K-1>``, one per board; what no within-layer entry covers
runs on ``board0`` (it also hosts the camera head), except in ``layer`` and ``hybrid``.

- ``layer``: the partitioner's K-stage pipeline (:func:`autodice_ros.partitioner.plan_mapping`).
- ``lop``: every *heavy* Conv/Gemm (at least :data:`HEAVY_SHARE` of the model's predicted time,
  and at least K output channels) split by output channels over all K boards, together with the
  channel-local layers after it (BN, activations, pools, a residual add), so one gather follows
  a whole conv-BN-ReLU(-pool) block. Grouped convs split along their groups where K allows.
- ``lip``: the same heavy layers (at least K input channels) split by input channels, alone or
  with the linear layers after it; the partial sums meet in the consumer's sub-model.
- ``height`` / ``width``: the spatially local layers (conv, pool, LRN, normalization,
  element-wise, residual adds, channel concats) cut into fused ranges, each ending where one
  tensor leaves it, grown as long as the tiles' halo costs at most :data:`MAX_HALO` extra work
  (DeepThings' fused tile partitioning, with a bound instead of a fixed depth); the tail that is
  not spatially local (global pool, fully connected layers) runs on ``board0``.
- ``hybrid``: spatial tiles (height) over the early, activation-heavy layers -- as long as each
  weight layer's output is at least as large as its weights -- then the partitioner's K-stage
  pipeline over the rest, stage k on board k.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autodice_ros.errors import MappingError, ModelError
from autodice_ros.graph.cost import node_costs
from autodice_ros.graph.model import ModelGraph, node_inputs
from autodice_ros.mapping import LayerSplit, Mapping, PartitionSpec, build_mapping
from autodice_ros.partitioner import Chain, Tensor, describe, priced_chain, solve
from autodice_ros.split.within import (
    CHANNEL_LOCAL,
    LIP_LINEAR,
    POOLS,
    SPATIAL_AXIS,
    SPATIAL_LOCAL,
    resolve,
    tile_requirement,
)

STRATEGIES = ('layer', 'lop', 'lip', 'height', 'width', 'hybrid')
HEAVY_SHARE = 0.01          # a layer worth splitting: >= 1 % of the model's predicted time
MAX_HALO = 1.25             # spatial tiles: at most 25 % more work than the range itself


def board_specs(boards: int) -> list[PartitionSpec]:
    return [PartitionSpec(f'board{k}', f'board{k}', (), key=f'board{k}_cpu0') for k in range(boards)]


def mapping_for_strategy(graph: ModelGraph, strategy: str, boards: int) -> Mapping:
    """The ``strategy`` plan of ``graph`` over ``boards`` boards (see the module docstring)."""
    from autodice_ros.split.bundle import mapping_for_boards

    if strategy not in STRATEGIES:
        raise MappingError(f'--strategy {strategy!r}: expected one of {", ".join(STRATEGIES)}')
    if boards < 1:
        raise MappingError(f'--boards {boards}: need at least 1')
    if strategy == 'layer' or boards == 1:
        return mapping_for_boards(graph, boards)
    source = f'--strategy {strategy} --boards {boards}'
    names = tuple(f'board{k}' for k in range(boards))
    if strategy in ('lop', 'lip'):
        splits = _channel_splits(graph, strategy, names)
    elif strategy in ('height', 'width'):
        splits = _spatial_splits(graph, strategy, names, stop=len(graph.nodes))
    else:
        return _hybrid(graph, names, source)
    if not splits:
        raise MappingError(f'{graph.where}: {source}: no layer of this model can be split that way')
    specs = board_specs(boards)
    inside = _covered(graph, splits)
    specs[0] = PartitionSpec('board0', 'board0', tuple(graph.ids[p] for p in graph.compute_nodes()
                                                       if p not in inside), key='board0_cpu0')
    return build_mapping(specs, graph, source, splits)


def _covered(graph: ModelGraph, splits: Sequence[LayerSplit]) -> set[int]:
    covered: set[int] = set()
    for split in splits:
        first, last = graph.resolve(split.node), graph.resolve(split.last or split.node)
        assert first is not None and last is not None
        covered.update(range(first, last + 1))
    return covered


def _predicted(graph: ModelGraph) -> list[float]:
    from autodice_ros.profile import DEFAULT_CALIBRATION, fused_flags

    return DEFAULT_CALIBRATION.seconds(node_costs(graph), fused_flags(graph))


def _next_compute(graph: ModelGraph, position: int) -> int | None:
    return next((q for q in range(position + 1, len(graph.nodes)) if not graph.constant[q]), None)


def _single_reader(graph: ModelGraph, tensor: str) -> int | None:
    readers = graph.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in graph.outputs:
        return None
    return readers[0]


def _channel_splits(graph: ModelGraph, mode: str, names: tuple[str, ...]) -> list[LayerSplit]:
    """LOP/LIP entries for the heavy weight layers, each extended over the layers it can carry."""
    seconds = _predicted(graph)
    total = sum(seconds) or 1.0
    followers = CHANNEL_LOCAL if mode == 'lop' else LIP_LINEAR
    splits: list[LayerSplit] = []
    taken: set[int] = set()
    for p, node in enumerate(graph.nodes):
        if p in taken or graph.constant[p] or node.op_type not in ('Conv', 'Gemm', 'MatMul'):
            continue
        if seconds[p] < HEAVY_SHARE * total:
            continue
        last = p
        while True:                                  # the chain of layers it can carry
            reader = _single_reader(graph, graph.nodes[last].output[0])
            if reader is None or reader != _next_compute(graph, last) or \
                    graph.nodes[reader].op_type not in followers:
                break
            last = reader
        candidate = None
        for end in range(last, p - 1, -1):           # the longest range that resolves
            if graph.constant[end]:
                continue
            split = LayerSplit(graph.ids[p], mode, (), names, graph.ids[end] if end != p else '', 'even',
                               f'{mode} of {graph.ids[p]!r}')
            try:
                resolve(split, graph)
            except (MappingError, ModelError):
                continue
            candidate = split
            break
        if candidate is None:
            continue
        splits.append(candidate)
        stop = graph.resolve(candidate.last) if candidate.last else p
        taken.update(range(p, (stop if stop is not None else p) + 1))
    return splits


def crossing_after(graph: ModelGraph) -> list[int]:
    """For each position, how many activations a cut right after it would carry."""
    last_use: dict[str, int] = {}
    born: dict[str, int] = {name: -1 for name in graph.inputs}
    for p, node in enumerate(graph.nodes):
        if graph.constant[p]:
            continue
        for name in node_inputs(node):
            if name in born:
                last_use[name] = p
        for name in node.output:
            if name:
                born[name] = p
    for name in graph.outputs:
        last_use[name] = len(graph.nodes)
    diff = np.zeros(len(graph.nodes) + 2, int)
    for name, start in born.items():
        end = last_use.get(name, start)
        if end > start:                          # crosses the gaps after start .. end - 1
            diff[max(start, 0)] += 1
            diff[end] -= 1
    counts = np.cumsum(diff)
    return [int(counts[p]) for p in range(len(graph.nodes))]


def _spatially_local(graph: ModelGraph, p: int) -> bool:
    node = graph.nodes[p]
    if node.op_type not in SPATIAL_LOCAL or (node.op_type in POOLS and len(node.output) > 1
                                             and node.output[1]):
        return False
    if node.op_type == 'Concat' and any(a.name == 'axis' and a.i not in (1, -3) for a in node.attribute):
        return False
    shape = graph.types.get(node.output[0])
    return shape is not None and len(shape.shape) == 4


def tile_work(graph: ModelGraph, positions: Sequence[int], exit_name: str, axis: int,
              bounds: Sequence[tuple[int, int]], flops: Sequence[int]) -> float:
    """The range's FLOPs summed over its tiles (halo included), as a multiple of the range's own."""
    own = sum(flops[p] for p in positions) or 1
    work = 0.0
    for interval in bounds:
        need: dict[str, tuple[int, int]] = {exit_name: interval}
        for p in reversed(positions):
            node = graph.nodes[p]
            out = need.get(node.output[0])
            if out is None:
                continue
            extent = graph.static_shape(node.output[0])[axis]
            work += flops[p] * (out[1] - out[0]) / extent
            reqs, _ = tile_requirement(graph, node, axis, out, '')
            for name, req in zip(node.input, reqs, strict=True):
                if req is not None:
                    have = need.get(name)
                    need[name] = req if have is None else (min(have[0], req[0]), max(have[1], req[1]))
    return work / own


def _spatial_splits(graph: ModelGraph, mode: str, names: tuple[str, ...], stop: int) -> list[LayerSplit]:
    """Fused tile ranges over the spatially local layers before position ``stop``: each as long as
    its halo costs at most MAX_HALO; a layer whose tiles alone would cost more than
    2 MAX_HALO - 1 (1.5x) stays whole."""
    axis = SPATIAL_AXIS[mode]
    flops = [c.flops for c in node_costs(graph)]
    crossing = crossing_after(graph)
    compute = [p for p in graph.compute_nodes() if p < stop]
    splits: list[LayerSplit] = []
    k = 0
    while k < len(compute):
        start = compute[k]
        if not _spatially_local(graph, start):
            k += 1
            continue
        best: tuple[int, LayerSplit] | None = None
        j = k
        while j < len(compute) and _spatially_local(graph, compute[j]):
            end = compute[j]
            j += 1
            if crossing[end] != 1:
                continue
            split = LayerSplit(graph.ids[start], mode, (), names, graph.ids[end] if end != start else '',
                               'even', f'{mode} tiles {graph.ids[start]!r}..{graph.ids[end]!r}')
            try:
                resolved = resolve(split, graph)
            except (MappingError, ModelError):
                continue
            overhead = tile_work(graph, resolved.positions, resolved.exit, axis, resolved.bounds, flops)
            if overhead > MAX_HALO and (best is not None or overhead > 2 * MAX_HALO - 1):
                break
            best = (j, split)
        if best is None:                # even one layer's tiles would cost too much: leave it whole
            k += 1
            continue
        k, split = best
        splits.append(split)
    return splits


def _hybrid(graph: ModelGraph, names: tuple[str, ...], source: str) -> Mapping:
    """Height tiles over the activation-heavy head, the partitioner's pipeline after it."""
    costs = node_costs(graph)
    crossing = crossing_after(graph)
    end = -1
    for p in graph.compute_nodes():
        if not _spatially_local(graph, p):
            break
        if costs[p].param_bytes > costs[p].activation_bytes and graph.nodes[p].op_type == 'Conv':
            break
        if crossing[p] == 1:
            end = p
    splits = _spatial_splits(graph, 'height', names, stop=end + 1) if end >= 0 else []
    inside = _covered(graph, splits)
    rest = [p for p in graph.compute_nodes() if p not in inside]
    if not rest:
        specs = board_specs(len(names))
        return build_mapping(specs, graph, source, splits)
    chain, cost_source = priced_chain(graph)
    index = {ident: i for i, ident in enumerate(chain.ids)}
    offset = index[graph.ids[rest[0]]]
    tail = _sub_chain(chain, offset)
    stages = min(len(names), len(tail))
    solution = solve(tail, stages, slack=0.01)
    assert solution is not None
    plan = describe(tail, solution.starts, cost_source)
    specs = board_specs(len(names))
    covered = {graph.ids[p] for p in inside}
    for k, stage in enumerate(plan.stages):
        nodes = tuple(n for n in stage.nodes if n not in covered)
        specs[k] = PartitionSpec(names[k], names[k], nodes, key=f'{names[k]}_cpu0')
    return build_mapping(specs, graph, source, splits)


def _sub_chain(chain: Chain, offset: int) -> Chain:
    """``chain`` from node ``offset`` on: what crosses in counts as the sub-chain's input."""
    tensors = []
    for t in chain.tensors:
        if t.last_use < offset and not (t.output and t.producer >= offset):
            continue
        producer = t.producer - offset if t.producer >= offset else -1
        tensors.append(Tensor(t.name, producer, t.last_use - offset if t.last_use >= offset else -1,
                              t.nbytes, t.output))
    unfused = chain.unfused_s[offset:] if chain.unfused_s is not None else None
    return Chain(ids=chain.ids[offset:], seconds=chain.seconds[offset:],
                 param_bytes=chain.param_bytes[offset:], tensors=tensors,
                 run_overhead_s=chain.run_overhead_s, per_tensor_s=chain.per_tensor_s,
                 per_byte_s=chain.per_byte_s, unfused_s=unfused)
