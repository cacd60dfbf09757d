"""The deployment bundle's manifest: the one contract between the splitter and everything after it.

A bundle is a directory holding one ONNX sub-model per partition and ``manifest.json``. The
splitter writes it with :func:`write_bundle`; ``verify``, the nodes, the plan (and so the launch
file and the runner) read it with :func:`load_bundle`. Nothing downstream re-derives partitions,
topics or shapes from the ONNX graph.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = 'manifest.json'

# Topics are relative ROS names, resolved in the pipeline's namespace (default /autodice).
INPUT_TOPIC = 'input'          # camera head -> first stages: the model's input tensor(s)
OUTPUT_TOPIC = 'output'        # tail: the model's outputs, one TensorList per frame
RESULT_TOPIC = 'result'        # tail: autodice_msgs/Classification
IMAGE_TOPIC = 'image'          # camera head's subscription (remap to the camera's topic)

DTYPES = ('float32', 'float16', 'float64', 'int8', 'uint8', 'int16', 'int32', 'int64', 'bool')
_TOKEN = re.compile(r'[^A-Za-z0-9_]')


def ros_token(text: str) -> str:
    """``text`` as one valid ROS name token: letters, digits, '_', not starting with a digit."""
    token = _TOKEN.sub('_', text).strip('_') or 'x'
    token = re.sub(r'_+', '_', token)
    return f'p_{token}' if token[0].isdigit() else token


def partition_topic(partition: str) -> str:
    """The topic a partition publishes all of its outputs on (one TensorList per frame)."""
    return f'{ros_token(partition)}/out'


@dataclass(frozen=True)
class TensorEntry:
    """One tensor crossing a link: what the codec checks every message against."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    topic: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Partition:
    """One sub-model and where it runs."""

    name: str
    board: str
    file: str
    sha256: str
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    provider: str = 'CPUExecutionProvider'
    threads: int = 1
    cores: tuple[int, ...] = ()
    nodes: tuple[str, ...] = ()

    @property
    def topic(self) -> str:
        return partition_topic(self.name)

    def input_topics(self) -> tuple[str, ...]:
        """Distinct topics this partition subscribes to, in input order."""
        return tuple(dict.fromkeys(t.topic for t in self.inputs))


@dataclass(frozen=True)
class Preprocess:
    """How the camera head turns an image into the model's input tensor."""

    input: str
    layout: str = 'NCHW'             # or NHWC
    height: int = 224
    width: int = 224
    channel_order: str = 'rgb'       # rgb or bgr: the order the model expects
    scale: float = 1.0 / 255.0       # applied first: x * scale
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Postprocess:
    """What the tail makes of the model's output."""

    output: str
    kind: str = 'classification'    # or 'raw': publish the tensors only
    softmax: bool = True
    top_k: int = 5
    labels: str | None = None       # file name inside the bundle, one label per line


@dataclass(frozen=True)
class ModelInfo:
    """The source model the bundle was cut from (``verify`` re-runs it)."""

    name: str
    path: str
    sha256: str
    opset: int
    ir_version: int


@dataclass(frozen=True)
class Edge:
    """A link of the partition graph: ``source`` publishes ``tensors`` that ``target`` reads."""

    source: str
    target: str
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    partitions: tuple[Partition, ...]
    preprocess: Preprocess
    postprocess: Postprocess
    strategy: str = 'layer'
    edges: tuple[Edge, ...] = field(default=())
    schema_version: int = SCHEMA_VERSION

    def partition(self, name: str) -> Partition:
        for part in self.partitions:
            if part.name == name:
                return part
        raise BundleError(f'no partition named {name!r} in the manifest '
                          f'(partitions: {", ".join(p.name for p in self.partitions)})')

    @property
    def boards(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.board for p in self.partitions))

    def on_board(self, board: str) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if p.board == board)

    def output_topics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.topic for t in self.outputs))

    def links(self) -> dict[str, int]:
        """Every tensor topic of the pipeline and how many nodes subscribe to it (tail included)."""
        readers: dict[str, int] = {t.topic: 0 for t in self.inputs}
        for part in self.partitions:
            readers.setdefault(part.topic, 0)
            for topic in part.input_topics():
                readers[topic] = readers.get(topic, 0) + 1
        for topic in self.output_topics():
            readers[topic] = readers.get(topic, 0) + 1
        return readers


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its directory and its manifest."""

    root: Path
    manifest: Manifest

    def model_path(self, partition: Partition) -> Path:
        return self.root / partition.file

    def labels(self) -> list[str] | None:
        name = self.manifest.postprocess.labels
        if not name:
            return None
        path = self.root / name
        try:
            return path.read_text().splitlines()
        except OSError as exc:
            raise BundleError(f'{path}: cannot read labels file: {exc.strerror}') from exc


# -- hashing ----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check_partition_file(bundle: Bundle, partition: Partition) -> Path:
    """Path of a partition's sub-model after checking it exists and its sha256 matches."""
    path = bundle.model_path(partition)
    if not path.is_file():
        raise BundleError(f'{path}: sub-model of partition {partition.name!r} is missing')
    actual = sha256_file(path)
    if actual != partition.sha256:
        raise BundleError(f'{path}: sha256 {actual[:12]}... does not match the manifest\'s '
                          f'{partition.sha256[:12]}... for partition {partition.name!r} (tampered or stale)')
    return path


# -- reading -----------------------------------------------------------------------------------

def _field(data: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise BundleError(f'{where}: field {key!r} is missing')
    value = data[key]
    if not isinstance(value, kind):
        raise BundleError(f'{where}: field {key!r} has the wrong type ({type(value).__name__})')
    return value


def _tensor(data: Any, where: str) -> TensorEntry:
    if not isinstance(data, Mapping):
        raise BundleError(f'{where}: expected an object')
    dtype = _field(data, 'dtype', where, str)
    if dtype not in DTYPES:
        raise BundleError(f'{where}: field \'dtype\' is {dtype!r}, not one of {", ".join(DTYPES)}')
    shape = _field(data, 'shape', where, list)
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BundleError(f'{where}: field \'shape\' must be a list of non-negative integers')
    return TensorEntry(_field(data, 'name', where, str), dtype, tuple(shape),
                       _field(data, 'topic', where, str))


def _tensors(data: Mapping[str, Any], key: str, where: str) -> tuple[TensorEntry, ...]:
    items = _field(data, key, where, list)
    return tuple(_tensor(item, f'{where}.{key}[{i}]') for i, item in enumerate(items))


def _partition(data: Any, where: str) -> Partition:
    if not isinstance(data, Mapping):
        raise BundleError(f'{where}: expected an object')
    return Partition(
        name=_field(data, 'name', where, str),
        board=_field(data, 'board', where, str),
        file=_field(data, 'file', where, str),
        sha256=_field(data, 'sha256', where, str),
        inputs=_tensors(data, 'inputs', where),
        outputs=_tensors(data, 'outputs', where),
        provider=str(data.get('provider', 'CPUExecutionProvider')),
        threads=int(data.get('threads', 1)),
        cores=tuple(int(c) for c in data.get('cores', ())),
        nodes=tuple(str(n) for n in data.get('nodes', ())),
    )


def _dataclass_from(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise BundleError(f'{where}: expected an object')
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BundleError(f'{where}: unknown field(s) {", ".join(unknown)}')
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise BundleError(f'{where}: {exc}') from exc


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate and convert parsed JSON into a :class:`Manifest` (errors name the field)."""
    if not isinstance(data, Mapping):
        raise BundleError(f'{where}: expected a JSON object')
    version = data.get('schema_version')
    if version != SCHEMA_VERSION:
        raise BundleError(f'{where}: schema_version {version!r} is not supported '
                          f'(this autodice reads version {SCHEMA_VERSION}); re-split the model')
    parts = _field(data, 'partitions', where, list)
    if not parts:
        raise BundleError(f'{where}: field \'partitions\' is empty')
    partitions = tuple(_partition(p, f'{where}: partitions[{i}]') for i, p in enumerate(parts))
    names = [p.name for p in partitions]
    if len(set(names)) != len(names):
        raise BundleError(f'{where}: partition names are not unique')
    edges = tuple(Edge(str(e['source']), str(e['target']), tuple(e['tensors']))
                  for e in data.get('edges', ()))
    return Manifest(
        model=_dataclass_from(ModelInfo, _field(data, 'model', where, Mapping), f'{where}: model'),
        inputs=_tensors(data, 'inputs', where),
        outputs=_tensors(data, 'outputs', where),
        partitions=partitions,
        preprocess=_dataclass_from(Preprocess, _field(data, 'preprocess', where, Mapping),
                                   f'{where}: preprocess'),
        postprocess=_dataclass_from(Postprocess, _field(data, 'postprocess', where, Mapping),
                                    f'{where}: postprocess'),
        strategy=str(data.get('strategy', 'layer')),
        edges=edges,
    )


def load_bundle(root: str | os.PathLike[str], check_hashes: bool = False) -> Bundle:
    """Read ``root/manifest.json``; with ``check_hashes`` also every sub-model's sha256."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f'{root}: bundle directory does not exist')
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f'{path}: no manifest (is {root} a bundle made by `autodice split`?)') from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f'{path}: not valid JSON (line {exc.lineno}: {exc.msg})') from exc
    bundle = Bundle(root, manifest_from_dict(data, str(path)))
    if check_hashes:
        for part in bundle.manifest.partitions:
            check_partition_file(bundle, part)
    return bundle


# -- writing -----------------------------------------------------------------------------------

def derive_edges(inputs: Iterable[TensorEntry], partitions: Iterable[Partition],
                 outputs: Iterable[TensorEntry]) -> tuple[Edge, ...]:
    """The partition graph, from which topic each partition reads ('input'/'output' = head/tail)."""
    parts = list(partitions)
    producer = {t.topic: 'input' for t in inputs}
    producer.update({p.topic: p.name for p in parts})
    links: dict[tuple[str, str], list[str]] = {}
    consumers = [(p.name, p.inputs) for p in parts] + [('output', tuple(outputs))]
    for consumer, tensors in consumers:
        for t in tensors:
            links.setdefault((producer.get(t.topic, '?'), consumer), []).append(t.name)
    return tuple(Edge(s, d, tuple(names)) for (s, d), names in links.items())


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    data = asdict(manifest)
    data['edges'] = [asdict(e) for e in manifest.edges]
    return data


@contextmanager
def staged_bundle(root: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """A temp dir next to ``root`` to write a bundle into; it becomes ``root`` when the block ends.

    An exception in the block removes the temp dir and leaves ``root`` as it was; an existing
    ``root`` is replaced only with ``force``. For writers that stream large sub-models straight
    into the bundle (the splitter); :func:`write_bundle` is the simple form.
    """
    root = Path(root)
    if root.exists() and not force:
        raise BundleError(f'{root}: already exists (use --force to replace it)')
    parent = root.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.', dir=parent))
    except FileExistsError as exc:
        raise BundleError(f'{root}: cannot write the bundle here: {exc.filename} is not a directory') from exc
    except OSError as exc:
        raise BundleError(f'{root}: cannot write the bundle here: {exc.strerror}') from exc
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{root.name}.old.', dir=parent))
            os.rename(root, old / root.name)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f'{root}: cannot write the bundle: {exc}') from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest_to_dict(manifest), indent=2) + '\n')


def write_bundle(root: str | os.PathLike[str], manifest: Manifest,
                 files: Mapping[str, bytes | Path], force: bool = False) -> Bundle:
    """Write the sub-models and the manifest into a temp dir next to ``root``, then rename.

    A failure leaves nothing behind; an existing ``root`` is replaced only with ``force``.
    """
    with staged_bundle(root, force) as tmp:
        for name, content in files.items():
            target = tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        write_manifest(tmp, manifest)
    return Bundle(Path(root), manifest)
