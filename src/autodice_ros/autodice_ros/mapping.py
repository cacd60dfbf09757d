"""Mappings: which nodes run in which partition, on which board, with which execution provider.

Three ways in, one validated :class:`Mapping` out (:func:`load_mapping`, :func:`mapping_from_cuts`,
:func:`build_mapping` for the partitioner):

1. **AutoDiCE ``mapping.json``, unchanged.** ``{"<host>_<resource>": ["<node id>", ...], ...}``:
   one key is one partition, the board is the part before the last ``_``. The resource is
   ``cpu<digits>`` (each digit a core id: ``cpu012`` = cores 0, 1, 2 = 3 threads; plain ``cpu``
   = 1 thread, any core) or ``gpu<digits>`` (a GPU execution provider; the runtime falls back to
   the CPU where there is none). Node ids are ONNX node names, or the first output's name where
   a node has none; AutoDiCE's ``format_onnx`` spelling (first output, ``/`` -> ``_``) works too.
   Within-layer entries, as AutoDiCE's ``horizontal.json`` writes them, may sit in the same
   file (or in a second one, ``--layer-splits``): ``{"conv2_1": ["lop", [48, 65535], ["nx01_cpu0",
   "nx01_cpu1"]]}`` = layer, mode (``lop``, ``lip``, ``height``, ``width``), split points, the
   partitions that share it (see :class:`LayerSplit` for what the points mean). As in AutoDiCE's
   ``hmapping.json``, the split layer may be listed in each sharing partition, or in none.

2. **Our YAML** (``.yaml`` / ``.yml``)::

       partitions:
         - name: head            # optional; default: the board, or <board>_<n> if it has several
           board: nx01
           provider: cpu         # cpu | gpu | cuda | tensorrt | an ONNX Runtime provider name
           threads: 2            # optional; default: the number of cores, or 1
           cores: [0, 1]         # optional: pin to these cores
           nodes: [conv1_1, conv1_2, relu1_2]     # explicit node ids ...
         - board: nx02
           from: conv2_1         # ... or a range in topological order, both ends inclusive;
           to: prob_1            # default from: after the previous partition's last node;
                                 # default to: before the next partition's ``from``, or the end
       layer_splits:             # within-layer splits (autodice_ros.split.within)
         - node: conv1_1         # a layer, or a fused range node .. to
           to: pool1_1           # optional: the last node of the fused range
           mode: height          # lop | lip | height | width
           sizes: [60, 52]       # optional: one per partition, adding up to the layer's extent
                                 # (default: even); or points: [...] with AutoDiCE's meaning
           partitions: [head, nx02]

   ``autodice nodes MODEL`` prints the topological order the ranges refer to.

3. **``--cuts ID,ID,...``**: a K-stage pipeline, cut after each named node in topological order;
   stage ``i`` is partition ``stage<i>`` on board ``board<i>``.

Validation: every compute node mapped exactly once (the nodes of a within-layer split: by that
entry, and listed, if at all, only in the partitions sharing it); nodes that only produce constants
(Constant, ConstantOfShape of an initializer, Shape of a static tensor, ...) need not be mapped
and follow their consumers, duplicated where several partitions read them; no partition empty;
unknown ids and malformed keys are errors naming the file and the node or key. A mapping may
send tensors back and forth between boards (AutoDiCE's MPI code allows it): a partition whose
nodes would make the partition graph cyclic is cut into several (``nx01_cpu0``,
``nx01_cpu0_1``, ...), all on its board, so the sub-models always form a DAG.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autodice_ros.errors import MappingError
from autodice_ros.graph.model import ModelGraph, node_inputs
from autodice_ros.manifest import ros_token

CPU = 'CPUExecutionProvider'
CUDA = 'CUDAExecutionProvider'
PROVIDERS = {'cpu': CPU, 'gpu': CUDA, 'cuda': CUDA, 'tensorrt': 'TensorrtExecutionProvider'}
LAYER_SPLIT_MODES = ('lop', 'lip', 'height', 'width')
_RESOURCE = re.compile(r'^(cpu|gpu)(\d*)$', re.IGNORECASE)
_YAML_FIELDS = frozenset({'name', 'board', 'provider', 'threads', 'cores', 'nodes', 'from', 'to'})
_SPLIT_FIELDS = frozenset({'node', 'to', 'mode', 'points', 'sizes', 'partitions'})


@dataclass(frozen=True)
class PartitionSpec:
    """One partition: a set of compute nodes, where it runs and how."""

    name: str
    board: str
    nodes: tuple[str, ...]              # compute node ids, topological order
    provider: str = CPU
    threads: int = 1
    cores: tuple[int, ...] = ()
    key: str = ''                       # the mapping entry it came from ('' = its name)


@dataclass(frozen=True)
class LayerSplit:
    """A within-layer split: the work of ``node`` (through ``last``, a fused range) shared by
    ``partitions`` along ``mode``.

    The split points' unit is the mode's: output channels of the range's first layer (``lop``),
    its input channels (``lip``), rows or columns of the range's output (``height``, ``width``).
    ``form`` says how ``points`` read:

    - ``autodice``, as AutoDiCE's front end reads them: ``lop`` points are cumulative ends
      (``[48, 65535]``: channels 0-47, then 48 to the end -- a last point past the end means
      "the rest"); ``lip``, ``height`` and ``width`` points are sizes, one per partition, the last
      again clamped to what is left. A list starting at 0 gives each piece's first index instead
      (``[0, 48]``: 0-47, 48 to the end), as no piece may be empty in either reading.
    - ``sizes``: one size per partition, adding up to the extent exactly (our YAML's ``sizes``).
    - ``even``: no points; pieces as equal as the extent allows.
    """

    node: str
    mode: str                           # lop | lip | height | width
    points: tuple[int, ...]
    partitions: tuple[str, ...]         # partition names (AutoDiCE: mapping keys)
    last: str = ''                      # the fused range's last node ('' = ``node`` alone)
    form: str = 'autodice'              # autodice | sizes | even
    where: str = ''                     # '<file>: within-layer entry ...', for messages


@dataclass(frozen=True)
class Mapping:
    """A validated mapping: partitions in an order where every partition follows its producers."""

    partitions: tuple[PartitionSpec, ...]
    source: str                         # the file, or '--cuts ...', for messages
    # Within-layer splits still to apply (autodice_ros.split.within): the partitions then list
    # every other node, not yet cut into pieces where the partition graph would cycle.
    layer_splits: tuple[LayerSplit, ...] = ()

    def partition(self, name: str) -> PartitionSpec:
        for part in self.partitions:
            if part.name == name:
                return part
        raise MappingError(f'{self.source}: no partition {name!r}')

    def assignment(self) -> dict[str, str]:
        """Node id -> partition name, for every compute node."""
        return {node: part.name for part in self.partitions for node in part.nodes}


@dataclass
class _Entry:
    """A partition as written in a mapping, before node ids are resolved."""

    where: str                          # '<file>: key ...' / '<file>: partitions[i]'
    spec: PartitionSpec
    nodes: list[str] | None = None
    first: str | None = None
    last: str | None = None


@dataclass
class _Draft:
    source: str
    entries: list[_Entry] = field(default_factory=list)
    layer_splits: list[LayerSplit] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------------

def parse_key(key: str, where: str) -> PartitionSpec:
    """An AutoDiCE key ``<host>_<resource>`` -> board, provider, threads, cores."""
    board, sep, resource = key.rpartition('_')
    if not sep or not board or not resource:
        raise MappingError(f'{where}: key {key!r} has no resource part '
                           f'(expected <host>_<resource>, e.g. nx01_cpu0 or nx01_gpu0)')
    match = _RESOURCE.match(resource)
    if not match:
        raise MappingError(f'{where}: key {key!r}: resource {resource!r} is not cpu<core digits> '
                           f'or gpu<digits>')
    kind, digits = match.group(1).lower(), match.group(2)
    if kind == 'gpu':
        return PartitionSpec(key, board, (), provider=CUDA, key=key)
    cores = tuple(int(d) for d in digits)
    if len(set(cores)) != len(cores):
        raise MappingError(f'{where}: key {key!r} names a core twice')
    return PartitionSpec(key, board, (), threads=max(1, len(cores)), cores=cores, key=key)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in value)


def _layer_split(node: str, value: list[Any], where: str) -> LayerSplit:
    """An AutoDiCE within-layer entry ``[mode, [points], [partition keys]]``."""
    where = f'{where}: within-layer entry {node!r}'
    if (len(value) != 3 or not _int_list(value[1]) or not isinstance(value[2], list)
            or not all(isinstance(p, str) for p in value[2])):
        raise MappingError(f'{where} must be ["<mode>", [split points], ["<partition key>", ...]]')
    return LayerSplit(node, value[0], tuple(value[1]), tuple(value[2]), where=where)


def _yaml_layer_split(item: Any, where: str) -> LayerSplit:
    if not isinstance(item, dict) or not isinstance(item.get('node'), str):
        raise MappingError(f'{where}: expected {{node, mode, partitions, optional to, sizes or points}}')
    unknown = sorted(set(map(str, item)) - _SPLIT_FIELDS)
    if unknown:
        raise MappingError(f'{where}: unknown field(s) {", ".join(unknown)}')
    where = f'{where} (within-layer entry {item["node"]!r})'
    mode = item.get('mode')
    if mode not in LAYER_SPLIT_MODES:
        raise MappingError(f'{where}: field \'mode\' is {mode!r}, not one of {", ".join(LAYER_SPLIT_MODES)}')
    parts = item.get('partitions')
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise MappingError(f'{where}: field \'partitions\' must be a list of partition names')
    last = item.get('to', '')
    if not isinstance(last, str):
        raise MappingError(f'{where}: field \'to\' must be a node id')
    if 'sizes' in item and 'points' in item:
        raise MappingError(f'{where}: give either \'sizes\' or \'points\', not both')
    form, key = ('sizes', 'sizes') if 'sizes' in item else ('autodice', 'points') if 'points' in item \
        else ('even', '')
    points = item.get(key, []) if key else []
    if not _int_list(points):
        raise MappingError(f'{where}: field {key!r} must be a list of integers')
    return LayerSplit(item['node'], mode, tuple(points), tuple(parts), last, form, where)


def _is_layer_split(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and value[0] in LAYER_SPLIT_MODES


def _read_json(path: Path, text: str) -> _Draft:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f'{path}: not valid JSON (line {exc.lineno}: {exc.msg})') from exc
    if not isinstance(data, dict) or not data:
        raise MappingError(f'{path}: expected a JSON object {{"<host>_<resource>": [node ids]}}')
    draft = _Draft(str(path))
    for key, value in data.items():
        if _is_layer_split(value):
            draft.layer_splits.append(_layer_split(key, value, str(path)))
            continue
        where = f'{path}: key {key!r}'
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MappingError(f'{where}: expected a list of node ids')
        draft.entries.append(_Entry(where, parse_key(key, str(path)), nodes=value))
    return draft


def provider_name(text: str, where: str) -> str:
    """``cpu`` / ``gpu`` / ``cuda`` / ``tensorrt`` or a full ONNX Runtime provider name."""
    if text.lower() in PROVIDERS:
        return PROVIDERS[text.lower()]
    if text.endswith('ExecutionProvider'):
        return text
    raise MappingError(f'{where}: field \'provider\' is {text!r}, not one of '
                       f'{", ".join(PROVIDERS)} or an ONNX Runtime provider name')


def _yaml_field(item: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = item.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise MappingError(f'{where}: field {key!r} must be a {kind.__name__}')
    return value


def _read_yaml(path: Path, text: str) -> _Draft:
    import yaml
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        line = f' (line {mark.line + 1})' if mark is not None else ''
        raise MappingError(f'{path}: not valid YAML{line}') from exc
    if not isinstance(data, dict) or not isinstance(data.get('partitions'), list):
        raise MappingError(f'{path}: expected a mapping with a list field \'partitions\'')
    unknown = sorted(set(data) - {'partitions', 'layer_splits', 'version'})
    if unknown:
        raise MappingError(f'{path}: unknown field(s) {", ".join(map(str, unknown))}')
    draft = _Draft(str(path))
    for i, item in enumerate(data['partitions']):
        where = f'{path}: partitions[{i}]'
        if not isinstance(item, dict):
            raise MappingError(f'{where}: expected a mapping (board, nodes or from/to, ...)')
        unknown = sorted(set(map(str, item)) - _YAML_FIELDS)
        if unknown:
            raise MappingError(f'{where}: unknown field(s) {", ".join(unknown)}')
        board = _yaml_field(item, 'board', str, where)
        if not board:
            raise MappingError(f'{where}: field \'board\' is missing')
        nodes = _yaml_field(item, 'nodes', list, where)
        if nodes is not None and not all(isinstance(n, str) for n in nodes):
            raise MappingError(f'{where}: field \'nodes\' must be a list of node ids')
        first, last = _yaml_field(item, 'from', str, where), _yaml_field(item, 'to', str, where)
        if nodes is not None and (first is not None or last is not None):
            raise MappingError(f'{where}: give either \'nodes\' or \'from\'/\'to\', not both')
        cores = _yaml_field(item, 'cores', list, where) or []
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cores):
            raise MappingError(f'{where}: field \'cores\' must be a list of core numbers')
        threads = _yaml_field(item, 'threads', int, where) or max(1, len(cores))
        if threads < 1:
            raise MappingError(f'{where}: field \'threads\' must be at least 1')
        provider = provider_name(str(item.get('provider', 'cpu')), where)
        name = _yaml_field(item, 'name', str, where) or ''
        spec = PartitionSpec(name, board, (), provider, threads, tuple(cores), key=name)
        draft.entries.append(_Entry(where, spec, nodes=nodes, first=first, last=last))
    splits = data.get('layer_splits') or []
    if not isinstance(splits, list):
        raise MappingError(f'{path}: field \'layer_splits\' must be a list')
    draft.layer_splits.extend(_yaml_layer_split(item, f'{path}: layer_splits[{i}]')
                              for i, item in enumerate(splits))
    _default_names(draft)
    return draft


def read_layer_splits(path: str | os.PathLike[str]) -> list[LayerSplit]:
    """Within-layer entries from their own file: AutoDiCE's ``horizontal.json``, or a YAML file
    with a ``layer_splits`` list."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() in ('.yaml', '.yml'):
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MappingError(f'{path}: not valid YAML') from exc
        items = data.get('layer_splits') if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise MappingError(f'{path}: expected a mapping with a list field \'layer_splits\'')
        return [_yaml_layer_split(item, f'{path}: layer_splits[{i}]') for i, item in enumerate(items)]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f'{path}: not valid JSON (line {exc.lineno}: {exc.msg})') from exc
    if not isinstance(data, dict) or not data:
        raise MappingError(f'{path}: expected a JSON object {{"<layer>": ["<mode>", [points], [keys]]}}')
    splits = []
    for key, value in data.items():
        if not _is_layer_split(value):
            raise MappingError(f'{path}: within-layer entry {key!r}: mode must be one of '
                               f'{", ".join(LAYER_SPLIT_MODES)}')
        splits.append(_layer_split(key, value, str(path)))
    return splits


def _default_names(draft: _Draft) -> None:
    """Unnamed YAML partitions: the board's name, or <board>_<n> where a board has several."""
    per_board: dict[str, int] = {}
    for entry in draft.entries:
        per_board[entry.spec.board] = per_board.get(entry.spec.board, 0) + 1
    taken = {e.spec.name for e in draft.entries if e.spec.name}
    counters: dict[str, int] = {}
    for entry in draft.entries:
        if entry.spec.name:
            continue
        board = entry.spec.board
        name = board if per_board[board] == 1 and board not in taken else ''
        while not name or name in taken:
            name = f'{board}_{counters.get(board, 0)}'
            counters[board] = counters.get(board, 0) + 1
        taken.add(name)
        entry.spec = replace(entry.spec, name=name, key=name)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise MappingError(f'{path}: cannot read: {exc.strerror or exc}') from exc
    except UnicodeDecodeError as exc:
        raise MappingError(f'{path}: not a text file') from exc


def load_mapping(path: str | os.PathLike[str], graph: ModelGraph,
                 layer_splits: Sequence[LayerSplit] = ()) -> Mapping:
    """Read an AutoDiCE JSON or our YAML mapping and validate it against ``graph``; ``layer_splits``
    (from :func:`read_layer_splits`) join the file's own within-layer entries."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() in ('.yaml', '.yml'):
        draft = _read_yaml(path, text)
    else:
        draft = _read_json(path, text)
    draft.layer_splits.extend(layer_splits)
    return _bind(draft, graph)


def mapping_from_cuts(cuts: Sequence[str], graph: ModelGraph, boards: Sequence[str] | None = None,
                      source: str | None = None) -> Mapping:
    """A pipeline of ``len(cuts) + 1`` stages, cut after each named node (topological order).

    ``boards`` names each stage's board (default ``board<i>``); no cuts = one partition.
    """
    where = source or ('--cuts ' + ','.join(cuts) if cuts else '--boards 1')
    if boards is not None and len(boards) != len(cuts) + 1:
        raise MappingError(f'{where}: {len(cuts)} cuts make {len(cuts) + 1} stages, '
                           f'but {len(boards)} boards are named')
    positions = []
    for cut in cuts:
        position = graph.resolve(cut)
        if position is None:
            raise MappingError(f'{where}: cut node {cut!r} is not in {graph.where}')
        positions.append(position)
    if len(set(positions)) != len(positions):
        raise MappingError(f'{where}: a node is named twice')
    draft = _Draft(where)
    ends = sorted(positions) + [len(graph.nodes) - 1]
    start = 0
    for i, end in enumerate(ends):
        board = boards[i] if boards is not None else f'board{i}'
        spec = PartitionSpec(f'stage{i}', board, (), key=f'stage{i}')
        draft.entries.append(_Entry(f'{where}: stage {i}', spec,
                                    nodes=[graph.ids[p] for p in range(start, end + 1)]))
        start = end + 1
    return _bind(draft, graph)


def build_mapping(partitions: Sequence[PartitionSpec], graph: ModelGraph, source: str,
                  layer_splits: Sequence[LayerSplit] = ()) -> Mapping:
    """Validate partitions given as data (node ids in ``nodes``), e.g. by the partitioner."""
    draft = _Draft(source, [_Entry(f'{source}: partition {p.name!r}', replace(p, key=p.key or p.name),
                                   nodes=list(p.nodes)) for p in partitions], list(layer_splits))
    return _bind(draft, graph)


# -- validation --------------------------------------------------------------------------------

def _resolve(graph: ModelGraph, ident: str, where: str) -> int:
    position = graph.resolve(ident)
    if position is None:
        raise MappingError(f'{where}: node {ident!r} is not in {graph.where}')
    return position


def _expand(draft: _Draft, graph: ModelGraph) -> list[list[int]]:
    """Each entry's node positions: explicit lists resolved, ranges expanded."""
    explicit = [None if e.nodes is None else [_resolve(graph, n, e.where) for n in e.nodes]
                for e in draft.entries]
    firsts = [None if e.first is None else _resolve(graph, e.first, e.where) for e in draft.entries]
    result: list[list[int]] = []
    previous_end = -1
    for i, entry in enumerate(draft.entries):
        listed = explicit[i]
        if listed is not None:
            result.append(listed)
            previous_end = max(listed, default=previous_end)
            continue
        # The next partition that places nodes (one listing none only shares within-layer work).
        later = next((j for j in range(i + 1, len(firsts)) if explicit[j] != []), None)
        first, following = firsts[i], (explicit[later], firsts[later]) if later is not None else None
        start = first if first is not None else previous_end + 1
        if entry.last is not None:
            end = _resolve(graph, entry.last, entry.where)
        elif following is None:
            end = len(graph.nodes) - 1
        elif following[1] is not None:
            end = following[1] - 1
        elif following[0]:
            end = min(following[0]) - 1
        else:
            raise MappingError(f'{entry.where}: field \'to\' is missing (the next partition has no '
                               f'\'from\' to end this range)')
        if end < start:
            raise MappingError(f'{entry.where}: range {graph.ids[start]!r}..{graph.ids[end]!r} is '
                               f'empty or backwards in topological order')
        result.append(list(range(start, end + 1)))
        previous_end = end
    return result


def _check_layer_splits(draft: _Draft, graph: ModelGraph) -> tuple[list[LayerSplit], dict[int, int]]:
    """The within-layer entries with partition keys turned into names and checked, and which
    entry each node of their ranges belongs to (ranges must not overlap)."""
    by_key = {e.spec.key or e.spec.name: e.spec.name for e in draft.entries}
    by_key.update({e.spec.name: e.spec.name for e in draft.entries})
    splits: list[LayerSplit] = []
    split_of: dict[int, int] = {}
    for split in draft.layer_splits:
        where = split.where or f'{draft.source}: within-layer entry {split.node!r}'
        if split.mode not in LAYER_SPLIT_MODES:
            raise MappingError(f'{where}: field \'mode\' is {split.mode!r}, not one of '
                               f'{", ".join(LAYER_SPLIT_MODES)}')
        first = _resolve(graph, split.node, where)
        last = _resolve(graph, split.last, f'{where}: field \'to\'') if split.last else first
        if last < first:
            raise MappingError(f'{where}: field \'to\': {split.last!r} comes before {split.node!r} in '
                               f'topological order')
        unknown = [p for p in split.partitions if p not in by_key]
        if unknown:
            raise MappingError(f'{where}: field \'partitions\': {unknown[0]!r} is not a partition (key) '
                               f'of the mapping')
        names = [by_key[p] for p in split.partitions]
        twice = next((p for p in names if names.count(p) > 1), None)
        if twice is not None:
            raise MappingError(f'{where}: field \'partitions\': {twice!r} is named twice')
        for p in range(first, last + 1):
            if graph.constant[p]:
                continue
            if p in split_of:
                other = splits[split_of[p]].node
                raise MappingError(f'{where}: overlaps within-layer entry {other!r} at node '
                                   f'{graph.ids[p]!r}')
            split_of[p] = len(splits)
        splits.append(replace(split, partitions=tuple(names), where=where))
    return splits, split_of


def _bind(draft: _Draft, graph: ModelGraph) -> Mapping:
    """Resolve ids, check coverage, and cut partitions where the partition graph would cycle.

    With within-layer entries the partitions come back uncut (listing every node outside the
    entries' ranges): :func:`autodice_ros.split.within.apply` rewrites the graph, then binds again.
    """
    splits, split_of = _check_layer_splits(draft, graph)
    sharing = {p for split in splits for p in split.partitions}
    names = [e.spec.name for e in draft.entries]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise MappingError(f'{draft.source}: partition name {duplicate!r} is used twice')
    owner: dict[int, int] = {}
    for index, (entry, positions) in enumerate(zip(draft.entries, _expand(draft, graph), strict=True)):
        computing = [p for p in positions if not graph.constant[p]]
        if not computing and entry.spec.name not in sharing:
            what = 'only constant nodes' if positions else 'no nodes'
            raise MappingError(f'{entry.where}: partition {entry.spec.name!r} maps {what}')
        for p in computing:
            if p in split_of:
                split = splits[split_of[p]]
                if entry.nodes is not None and entry.spec.name not in split.partitions:
                    raise MappingError(f'{entry.where}: node {graph.ids[p]!r} belongs to within-layer '
                                       f'entry {split.node!r}, which partitions '
                                       f'{", ".join(split.partitions)} share; it cannot also be mapped '
                                       f'to {entry.spec.name!r}')
                continue
            if p in owner:
                other = draft.entries[owner[p]].spec.name
                place = f'twice in {other!r}' if owner[p] == index else \
                    f'twice (in {other!r} and {entry.spec.name!r})'
                raise MappingError(f'{draft.source}: node {graph.ids[p]!r} is mapped {place}')
            owner[p] = index
    missing = [graph.ids[p] for p in graph.compute_nodes() if p not in owner and p not in split_of]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise MappingError(f'{draft.source}: node {missing[0]!r} is not mapped{more}')
    if splits:
        specs = tuple(replace(e.spec, nodes=tuple(graph.ids[p] for p in sorted(owner) if owner[p] == i),
                              key=e.spec.key or e.spec.name)
                      for i, e in enumerate(draft.entries))
        return Mapping(specs, draft.source, tuple(splits))
    pieces = _acyclic_pieces(owner, graph)
    return Mapping(_name_pieces(pieces, draft, graph), draft.source)


def _compute_preds(graph: ModelGraph) -> list[set[int]]:
    """For each node, the compute nodes whose outputs it reads (constants are duplicated, so free)."""
    preds: list[set[int]] = []
    for node_index in range(len(graph.nodes)):
        found = set()
        for name in node_inputs(graph.nodes[node_index]):
            p = graph.producer.get(name)
            if p is not None and not graph.constant[p]:
                found.add(p)
        preds.append(found)
    return preds


def _acyclic_pieces(owner: dict[int, int], graph: ModelGraph) -> list[tuple[int, list[int]]]:
    """Split each entry's nodes into as few pieces as keep the piece graph acyclic.

    Level = the number of entry changes on the longest path to a node; pieces start as
    (entry, level), where every inter-piece edge raises the level, so they form a DAG. Then each
    entry's consecutive pieces merge wherever no path through another piece joins them.
    """
    preds = _compute_preds(graph)
    level: dict[int, int] = {}
    for p in sorted(owner):                                  # positions are topological
        level[p] = max((level[q] + (owner[q] != owner[p]) for q in preds[p] if q in owner), default=0)
    piece_of: dict[int, tuple[int, int]] = {p: (owner[p], level[p]) for p in owner}
    parent = {key: key for key in set(piece_of.values())}

    def find(key: tuple[int, int]) -> tuple[int, int]:
        while parent[key] != key:
            key = parent[key]
        return key

    def successors() -> dict[tuple[int, int], set[tuple[int, int]]]:
        succ: dict[tuple[int, int], set[tuple[int, int]]] = {find(k): set() for k in parent}
        for p in owner:
            for q in preds[p]:
                a, b = find(piece_of[q]), find(piece_of[p])
                if a != b:
                    succ[a].add(b)
        return succ

    def long_path(succ: dict[tuple[int, int], set[tuple[int, int]]], a: tuple[int, int],
                  b: tuple[int, int]) -> bool:
        """Is there a path a -> ... -> b through at least one other piece?"""
        todo = [s for s in succ[a] if s != b]
        seen = set(todo)
        while todo:
            here = todo.pop()
            if here == b:
                return True
            for s in succ[here]:
                if s not in seen:
                    seen.add(s)
                    todo.append(s)
        return False

    succ = successors()
    for entry in sorted({e for e, _ in parent}):
        group: tuple[int, int] | None = None
        for key in sorted(k for k in parent if k[0] == entry):
            if group is None or long_path(succ, group, key) or long_path(succ, key, group):
                group = key
                continue
            parent[key] = group
            succ[group] |= succ.pop(key)
            for targets in succ.values():
                if key in targets:
                    targets.discard(key)
                    targets.add(group)
            succ[group].discard(group)
    members: dict[tuple[int, int], list[int]] = {}
    for p in sorted(owner):
        members.setdefault(find(piece_of[p]), []).append(p)
    succ = successors()
    # Order pieces topologically, earliest first node first.
    indegree = {k: 0 for k in members}
    for k in members:
        for s in succ[k]:
            indegree[s] += 1
    ready = sorted((members[k][0], k) for k in members if indegree[k] == 0)
    ordered: list[tuple[int, list[int]]] = []
    while ready:
        _, key = ready.pop(0)
        ordered.append((key[0], members[key]))
        for s in succ[key]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append((members[s][0], s))
                ready.sort()
    return ordered


def _name_pieces(pieces: list[tuple[int, list[int]]], draft: _Draft, graph: ModelGraph
                 ) -> tuple[PartitionSpec, ...]:
    taken = {e.spec.name for e in draft.entries}
    suffix: dict[int, int] = {}             # entry -> next suffix; absent: first piece
    specs = []
    for entry_index, positions in pieces:
        spec = draft.entries[entry_index].spec
        name = spec.name
        if entry_index in suffix:
            while name in taken:
                name = f'{spec.name}_{suffix[entry_index]}'
                suffix[entry_index] += 1
        else:
            suffix[entry_index] = 1
        taken.add(name)
        specs.append(replace(spec, name=name, nodes=tuple(graph.ids[p] for p in positions),
                             key=spec.key or spec.name))
    tokens: dict[str, str] = {}
    for spec in specs:
        token = ros_token(spec.name)
        if token in tokens:
            raise MappingError(f'{draft.source}: partitions {tokens[token]!r} and {spec.name!r} '
                               f'would share the topic name {token!r}; rename one')
        tokens[token] = spec.name
    return tuple(specs)


# -- writing -----------------------------------------------------------------------------------

def _resource(spec: PartitionSpec) -> str:
    if spec.provider != CPU:
        return 'gpu0'
    return 'cpu' + ''.join(str(c) for c in (spec.cores or range(spec.threads)))


def to_autodice(mapping: Mapping) -> dict[str, list[str]]:
    """The mapping as AutoDiCE ``mapping.json`` data (pieces of one entry join again)."""
    out: dict[str, list[str]] = {}
    for spec in mapping.partitions:
        key = spec.key or spec.name
        board, sep, resource = key.rpartition('_')
        if not (sep and board == spec.board and _RESOURCE.match(resource)):
            key = f'{spec.board}_{_resource(spec)}'
        out.setdefault(key, []).extend(spec.nodes)
    return out


def to_yaml(mapping: Mapping) -> str:
    """The mapping in our YAML form (one entry per partition, explicit node lists)."""
    import yaml
    parts = []
    for spec in mapping.partitions:
        item: dict[str, Any] = {'name': spec.name, 'board': spec.board}
        if spec.provider != CPU:
            item['provider'] = spec.provider
        item['threads'] = spec.threads
        if spec.cores:
            item['cores'] = list(spec.cores)
        item['nodes'] = list(spec.nodes)
        parts.append(item)
    return str(yaml.safe_dump({'partitions': parts}, sort_keys=False, width=100))
