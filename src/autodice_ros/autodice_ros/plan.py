"""Which nodes one board runs, as data: the one plan behind ``pipeline.launch.py`` and ``autodice run``.

:func:`make_plan` reads the bundle's manifest and returns :class:`NodeSpec` entries (executable,
name, namespace, parameters, remappings, environment). The launch file turns them into
``launch_ros`` ``Node`` actions; the runner into child processes. Neither adds anything.

Transport per node: a node whose links all stay on its board gets the shared-memory profile; a
node with a link to another board gets the network profile (with asynchronous publication, so
a slow link never blocks the publisher's callback). On top of DDS, tensors between processes of
one board take the same-board fast path (``fast_path``: shared-memory slots, a descriptor over
DDS); with ``in_process`` a board's stages share one process (``stages``) and hand tensors over
without any copy.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

from autodice_ros.environment import MALLOC_TUNABLES, PROFILE_VAR, profile_path
from autodice_ros.errors import BundleError
from autodice_ros.manifest import IMAGE_TOPIC, Manifest, load_bundle, ros_token

PACKAGE = 'autodice_ros'
ParamValue = bool | int | float | str


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: everything ``launch_ros.actions.Node`` or a subprocess needs."""

    executable: str
    name: str
    namespace: str
    board: str
    parameters: Mapping[str, ParamValue]
    env: Mapping[str, str] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    package: str = PACKAGE
    enclave: str = ''                  # SROS2 enclave (DDS security), '' = none

    def ros_arguments(self) -> list[str]:
        """``--ros-args`` for a plain process start (what launch_ros generates itself)."""
        args = ['--ros-args', '-r', f'__node:={self.name}', '-r', f'__ns:={self.namespace}']
        for key, value in self.parameters.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if isinstance(value, str):
                text = "'" + value.replace("'", "''") + "'"   # YAML string: "0" stays "0"
            args += ['-p', f'{key}:={text}']
        for source, target in self.remappings:
            args += ['-r', f'{source}:={target}']
        if self.enclave:
            args += ['--enclave', self.enclave]
        return args


def _opt(default: ParamValue, help_text: str) -> Any:
    """A plan option: its default and the help text both the launch file and the CLI show."""
    return field(default=default, metadata={'help': help_text})


@dataclass(frozen=True)
class PlanOptions:
    """The launch arguments (``name:=value``) and the ``autodice run`` options, defined once."""

    board: str = _opt('', "this board's name in the manifest; empty: every partition here")
    namespace: str = _opt('/autodice', 'namespace of every node and topic of the pipeline')
    source: str = _opt('synthetic', "camera stand-in: 'synthetic', 'none', or a folder of images")
    rate: float = _opt(5.0, 'image_source frames per second')
    count: int = _opt(0, 'image_source frames to publish (0: forever)')
    image_topic: str = _opt('', "camera topic the head subscribes to (remaps 'image')")
    head: bool = _opt(True, 'start the camera head (on the board of the first stage)')
    tail: bool = _opt(True, 'start the tail (on the board of the last stage)')
    reliability: str = _opt('reliable', "QoS of the image and tensor topics: 'reliable' or 'best_effort'")
    depth: int = _opt(10, 'QoS history depth of the image and tensor topics: 1 = newest frame only, '
                      'N = every frame while the backlog stays under N')
    image_reliability: str = _opt('', "QoS reliability of the camera topic ('' = as reliability); "
                                  "'best_effort' for a camera driver with sensor-data QoS, which a "
                                  "reliable subscriber never matches")
    max_in_flight: int = _opt(0, 'frames between the camera head and the tail at once; images beyond '
                              'are dropped at the head, before any board works on them (0: no '
                              'limit). A within-layer split under a fast camera needs this (1-3)')
    lifespan: float = _opt(0.0, 'seconds a published frame stays deliverable (DDS Lifespan; 0: forever): '
                           'older frames, e.g. from a link outage, are dropped, not delivered late')
    transport: str = _opt('auto', "DDS profile: 'auto' (per link), 'board', 'network', 'none'")
    threads: int = _opt(0, "ONNX Runtime threads per stage (0: the manifest's)")
    fast_path: bool = _opt(True, 'same-board tensors through shared memory, a descriptor over DDS '
                           '(false: every tensor as a TensorList over DDS)')
    in_process: bool = _opt(False, "this board's stages (all, without 'board') in one process "
                            "('stages'): no copy between them, but one crash stops them all")
    one_process: bool = _opt(False, "as in_process, and this board's camera head and tail join that "
                             'process too: one ROS process per board (about 100 MiB less per node '
                             'folded in), one crash stops them all')
    keystore: str = _opt('', 'SROS2 keystore: DDS security on, each node in enclave <namespace>/<node> '
                         '(needs a Fast DDS built with security); empty: off')


def option_fields() -> list[tuple[str, type, ParamValue, str]]:
    """(name, type, default, help) of every plan option: launch arguments and CLI flags."""
    kinds = {'str': str, 'float': float, 'int': int, 'bool': bool}
    return [(f.name, kinds[str(f.type)], cast(ParamValue, f.default), f.metadata['help'])
            for f in fields(PlanOptions)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
        return True
    if lowered in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError(f'{text!r} is not a boolean (true/false)')


def options_from_strings(values: Mapping[str, str]) -> PlanOptions:
    """PlanOptions from launch-argument strings; unknown names are an error naming them."""
    known = {name: kind for name, kind, _, _ in option_fields()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BundleError(f'unknown plan option(s): {", ".join(unknown)}')
    converted: dict[str, ParamValue] = {}
    for name, text in values.items():
        kind = known[name]
        try:
            converted[name] = parse_bool(text) if kind is bool else kind(text)
        except ValueError as exc:
            raise BundleError(f'plan option {name}: {exc}') from exc
    return PlanOptions(**converted)  # type: ignore[arg-type]


def link_boards(manifest: Manifest) -> tuple[str, str]:
    """Boards of the camera head and of the tail: where the first and last stages run."""
    head = next((e.target for e in manifest.edges if e.source == 'input'), None)
    tail = next((e.source for e in manifest.edges if e.target == 'output'), None)
    boards = {p.name: p.board for p in manifest.partitions}
    if head not in boards or tail not in boards:
        raise BundleError('manifest: the partition graph (edges) has no link from the input '
                          'or none to the output')
    return boards[head], boards[tail]


def crosses_boards(manifest: Manifest) -> dict[str, bool]:
    """Per node name ('camera_head', 'tail', partition names): has a link to another board."""
    head_board, tail_board = link_boards(manifest)
    board = {p.name: p.board for p in manifest.partitions}
    board.update({'input': head_board, 'output': tail_board})
    crossing = {name: False for name in board}
    for edge in manifest.edges:
        if board[edge.source] != board[edge.target]:
            crossing[edge.source] = crossing[edge.target] = True
    return {('camera_head' if k == 'input' else 'tail' if k == 'output' else k): v
            for k, v in crossing.items()}


FIXED_NODES = ('image_source', 'camera_head', 'tail')


def stage_node_name(partition: str) -> str:
    """A stage's node name: its partition's name as a ROS token (prefixed if that is taken)."""
    token = ros_token(partition)
    return f'stage_{token}' if token in FIXED_NODES else token


def stages_node_name(board: str) -> str:
    """The node name of the process that runs a board's stages together (``in_process``); without
    a board (every partition on this machine), all of them."""
    return f'stages_{ros_token(board)}' if board else 'stages'


def node_env(kind: str, asynchronous: bool = False) -> dict[str, str]:
    """Environment for one node's transport: 'board', 'network' or 'none'.

    ``asynchronous``: publish from Fast DDS's own thread, so a slow link to another board never
    blocks the node's callback for the wire time of a frame.
    """
    if kind == 'none':
        return {}
    env = {PROFILE_VAR: str(profile_path(kind)), 'GLIBC_TUNABLES': MALLOC_TUNABLES}
    if asynchronous:
        env['RMW_FASTRTPS_PUBLICATION_MODE'] = 'ASYNCHRONOUS'
    return env


def secured(spec: NodeSpec, keystore: str) -> NodeSpec:
    """``spec`` with DDS security on: SROS2 keystore, enforce, enclave ``<namespace>/<node>``.

    The enclave's certificates and permissions must exist (``ros2 security create_enclave``);
    a Fast DDS built without security refuses to start the node, which the runner reports.
    """
    enclave = f'{spec.namespace.rstrip("/")}/{spec.name}'
    where = Path(keystore) / 'enclaves' / enclave.lstrip('/')
    if not where.is_dir():
        raise BundleError(f'keystore {keystore}: no enclave {enclave} (expected {where}; create it with '
                          f'`ros2 security create_enclave {keystore} {enclave}`)')
    env = {**spec.env, 'ROS_SECURITY_KEYSTORE': keystore, 'ROS_SECURITY_ENABLE': 'true',
           'ROS_SECURITY_STRATEGY': 'Enforce'}
    return replace(spec, env=env, enclave=enclave)


def make_plan(bundle_dir: str | Path, options: PlanOptions = PlanOptions()) -> list[NodeSpec]:
    """The nodes ``options.board`` runs (all of them when no board is given)."""
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    root = str(Path(bundle_dir).resolve())
    if options.board and options.board not in manifest.boards:
        raise BundleError(f'{bundle_dir}: no partition on board {options.board!r} '
                          f'(boards: {", ".join(manifest.boards)})')
    head_board, tail_board = link_boards(manifest)
    crossing = crosses_boards(manifest)

    def here(board: str) -> bool:
        return not options.board or options.board == board

    # Deployed over several boards, every node speaks the network profile (TCP between boards,
    # shared memory within one): participants of the two profiles share no transport and would
    # never connect. One machine running every partition keeps the shared-memory profile.
    spread = bool(options.board) and len(manifest.boards) > 1

    def env_for(name: str) -> dict[str, str]:
        kind = options.transport if options.transport != 'auto' else 'network' if spread else 'board'
        return node_env(kind, asynchronous=spread and crossing.get(name, False))

    qos: dict[str, ParamValue] = {'qos.reliability': options.reliability, 'qos.depth': options.depth,
                                  'qos.lifespan': options.lifespan}
    tensors: dict[str, ParamValue] = {**qos, 'fast_path': options.fast_path}
    receivers: dict[str, ParamValue] = {**tensors, 'remote_boards': spread}   # stages and tail
    image_reliability = options.image_reliability or options.reliability
    ns = options.namespace
    specs: list[NodeSpec] = []
    if options.head and here(head_board):
        remap = ((IMAGE_TOPIC, options.image_topic),) if options.image_topic else ()
        if options.source != 'none':
            folder = '' if options.source == 'synthetic' else options.source
            source: dict[str, ParamValue] = {'rate': options.rate, 'count': options.count, 'folder': folder,
                                             'bundle': root}
            camera: dict[str, ParamValue] = {'qos.reliability': image_reliability, 'qos.depth': options.depth}
            specs.append(NodeSpec('image_source', 'image_source', ns, head_board, {**source, **camera},
                                  env_for('camera_head'), remap))
        image_qos: dict[str, ParamValue] = {'image_qos.reliability': image_reliability,
                                            'image_qos.depth': options.depth}
        admission: dict[str, ParamValue] = {'max_in_flight': options.max_in_flight, 'remote_boards': spread}
        specs.append(NodeSpec('camera_head', 'camera_head', ns, head_board,
                              {'bundle': root, **tensors, **image_qos, **admission}, env_for('camera_head'),
                              remap))
    threads: dict[str, ParamValue] = {'threads': options.threads} if options.threads else {}
    if options.in_process or options.one_process:   # one process, on its widest link's profile
        parts = [p for p in manifest.partitions if here(p.board)]
        widest = next((p.name for p in parts if crossing.get(p.name)), parts[0].name)
        specs.append(NodeSpec('stages', stages_node_name(options.board), ns, options.board or parts[0].board,
                              {'bundle': root, 'partitions': ','.join(p.name for p in parts),
                               **receivers, **threads}, env_for(widest)))
    else:
        for part in (p for p in manifest.partitions if here(p.board)):
            specs.append(NodeSpec('stage', stage_node_name(part.name), ns, part.board,
                                  {'bundle': root, 'partition': part.name, **receivers, **threads},
                                  env_for(part.name)))
    if options.tail and here(tail_board):
        specs.append(NodeSpec('tail', 'tail', ns, tail_board, {'bundle': root, **receivers}, env_for('tail')))
    if options.one_process:
        specs = fold_into_stages(specs)
    if options.keystore:
        specs = [secured(spec, options.keystore) for spec in specs]
    return specs


FOLDED = ('camera_head', 'tail')     # the nodes ``one_process`` runs inside the ``stages`` process


def fold_into_stages(specs: list[NodeSpec]) -> list[NodeSpec]:
    """The camera head and tail specs merged into the ``stages`` spec: their parameters and
    remappings (the process's, which the stages ignore), a flag each (the ``stages`` parameters
    ``camera_head`` and ``tail``), and their environment (asynchronous publication if any of them
    publishes across boards)."""
    stages = next(s for s in specs if s.executable == 'stages')
    folded = [s for s in specs if s.executable in FOLDED]
    parameters: dict[str, ParamValue] = {}
    env: dict[str, str] = {}
    remappings: list[tuple[str, str]] = []
    for spec in [*folded, stages]:
        parameters.update(spec.parameters)
        env.update(spec.env)
        remappings += [r for r in spec.remappings if r not in remappings]
    parameters.update({name: any(s.executable == name for s in folded) for name in FOLDED})
    merged = replace(stages, parameters=parameters, env=env, remappings=tuple(remappings))
    return [merged if s is stages else s for s in specs if s.executable not in FOLDED]
