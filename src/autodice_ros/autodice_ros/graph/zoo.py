"""A model zoo without downloads: the light Model Zoo CNNs in the onnx wheel, with seeded weights.

``onnx/backend/test/data/light/light_<name>.onnx`` keeps the real graphs (VGG19, ResNet50, ...)
but produces every weight with a ``ConstantOfShape`` node fed by a ``<weight>__SHAPE``
initializer. :func:`materialize` turns those into initializers of seeded random values and
regenerates the few real parameters the files keep (BN statistics trained for the real weights
would blow random activations up). The values are scaled by role so activations stay finite and
the softmax is not degenerate: He-normal conv/gemm weights, BN and scale factors near 1, biases,
shifts and BN means near 0, BN variances near 1. A weight's bytes depend only on the model, its
name and the seed. The graph, opset and IR version stay the original's; unused inputs and
initializers (zfnet512 and resnet50 carry a dangling ``imagenet1k_blobs_queue`` one) go. These
files are IR 3, whose rules require every initializer to be listed as a graph input as well:
only the real data inputs are inputs without an initializer.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from autodice_ros.errors import ModelError
from autodice_ros.graph.weights import LazyArray, write_arrays

NAMES = ('vgg19', 'resnet50', 'densenet121', 'inception_v1', 'inception_v2', 'squeezenet',
         'shufflenet', 'bvlc_alexnet', 'zfnet512')
LIGHT_DIR = Path(onnx.__file__).parent / 'backend' / 'test' / 'data' / 'light'
# Ops that pass a parameter through unchanged in value (e.g. densenet's Unsqueeze of a BN scale).
_PASS_THROUGH = frozenset({'Unsqueeze', 'Reshape', 'Identity', 'Cast', 'Squeeze', 'Flatten'})
_WEIGHT_LAYERS = frozenset({'Conv', 'Gemm', 'MatMul', 'ConvTranspose'})


def light_path(name: str) -> Path:
    if name not in NAMES:
        raise ModelError(f'{name!r} is not in the zoo (one of: {", ".join(NAMES)})')
    path = LIGHT_DIR / f'light_{name}.onnx'
    if not path.is_file():
        raise ModelError(f'{path}: missing from the installed onnx wheel')
    return path


def _rng(model: str, tensor: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f'{model}\0{tensor}'.encode()).digest()
    return np.random.default_rng([seed, *struct.unpack('<4I', digest[:16])])


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], center: float, std: float) -> np.ndarray:
    """Uniform values with the given mean and standard deviation (uniform is 2x faster than normal)."""
    values = rng.random(shape, dtype=np.float32)
    half = np.float32(std * np.sqrt(3.0))
    values *= 2 * half
    values += np.float32(center) - half
    return values


class _Graph:
    """Who reads what in a light zoo graph, to tell each parameter's role."""

    def __init__(self, nodes: list[onnx.NodeProto], constants: set[str], outputs: list[str]) -> None:
        self.readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in nodes:
            for slot, tensor in enumerate(node.input):
                self.readers.setdefault(tensor, []).append((node, slot))
            for tensor in node.output:
                self.producer[tensor] = node
        self.constants = constants
        self.classifiers = self._classifiers(outputs)
        self.residual_ends = self._residual_ends(nodes)

    def _classifiers(self, outputs: list[str]) -> set[str]:
        """Conv/Gemm nodes a graph output depends on with no other weight layer in between."""
        found: set[str] = set()
        todo, seen = list(outputs), set()
        while todo:
            node = self.producer.get(todo.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in _WEIGHT_LAYERS:
                found.add(node.output[0])
            else:
                todo.extend(t for t in node.input if t not in self.constants)
        return found

    def _affine_source(self, tensor: str) -> onnx.NodeProto | None:
        """The BatchNormalization ``tensor`` comes from, through scale/shift ops, if any."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in ('Mul', 'Add') and \
                sum(t not in self.constants for t in node.input) == 1:
            node = self.producer.get(next(t for t in node.input if t not in self.constants))
        return node if node is not None and node.op_type == 'BatchNormalization' else None

    def _residual_ends(self, nodes: list[onnx.NodeProto]) -> set[str]:
        """BNs ending a residual branch added to an identity path: they start near zero."""
        ends: set[str] = set()
        for node in nodes:
            if node.op_type not in ('Sum', 'Add'):
                continue
            sources = [self._affine_source(t) for t in node.input if t not in self.constants]
            if len(sources) > 1 and None in sources:
                ends.update(bn.output[0] for bn in sources if bn is not None)
        return ends

    def role(self, name: str) -> tuple[str, onnx.NodeProto]:
        """(op and input slot of the first real reader of parameter ``name``, that reader)."""
        while True:
            node, slot = self.readers[name][0]
            if node.op_type in _PASS_THROUGH and slot == 0:
                name = node.output[0]
                continue
            return f'{node.op_type}:{slot}', node


def _values(role: str, node: onnx.NodeProto, shape: tuple[int, ...], graph: _Graph,
            rng: np.random.Generator) -> np.ndarray:
    if role in ('Conv:1', 'Gemm:1'):
        if node.output[0] in graph.classifiers:
            return _uniform(rng, shape, 0.0, 0.01)      # Caffe's classifier init: logits of order 1
        if role == 'Conv:1':
            fan_in = int(np.prod(shape[1:]))
        else:
            trans_b = next((a.i for a in node.attribute if a.name == 'transB'), 0)
            fan_in = shape[1] if trans_b else shape[0]
        return _uniform(rng, shape, 0.0, float(np.sqrt(2.0 / max(fan_in, 1))))    # He
    if role == 'BatchNormalization:1':
        # A residual branch starts near zero, or the sum of 16 blocks grows 2**16-fold.
        return _uniform(rng, shape, 0.2 if node.output[0] in graph.residual_ends else 1.0, 0.03)
    if role in ('Mul:0', 'Mul:1'):
        return _uniform(rng, shape, 1.0, 0.03)
    if role == 'BatchNormalization:4':
        return _uniform(rng, shape, 1.0, 0.1)
    return _uniform(rng, shape, 0.0, 0.03)              # biases, shifts, BN means


@dataclass
class ZooModel:
    """A zoo model ready to write: the graph, and its weights made on demand one at a time."""

    name: str
    model: onnx.ModelProto
    weights: list[LazyArray]

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write it to ``path`` atomically; returns the file's sha256."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f'{path}: cannot write here: {exc.strerror or exc}') from exc
        return write_arrays(path, self.model, self.weights)


def materialize(name: str, seed: int = 0) -> ZooModel:
    """The zoo model ``name`` with seeded random weights (see the module docstring)."""
    source = light_path(name)
    model = onnx.load(os.fspath(source))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}        # weight -> shape
    nodes = []
    for node in graph.node:
        if node.op_type == 'ConstantOfShape' and node.input and node.input[0] in inits:
            shapes[node.output[0]] = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        else:
            nodes.append(node)
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and not tensor.name.endswith('__SHAPE'):
            shapes[tensor.name] = tuple(tensor.dims)
    kept = [t for t in graph.initializer if t.name not in shapes and not t.name.endswith('__SHAPE')]
    roles = _Graph(nodes, set(shapes) | {t.name for t in kept}, [v.name for v in graph.output])
    kept = [t for t in kept if t.name in roles.readers]
    weights: list[LazyArray] = []
    for tensor_name, shape in shapes.items():
        if tensor_name not in roles.readers:
            continue
        role, reader = roles.role(tensor_name)
        weights.append(LazyArray(tensor_name, shape, np.dtype(np.float32), partial(
            _values, role, reader, shape, roles, _rng(name, tensor_name, seed))))
    data = [v for v in graph.input
            if v.name not in inits and v.name not in shapes and v.name in roles.readers]
    # IR 3 requires every initializer to be a graph input as well.
    weight_inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in kept]
    weight_inputs += [helper.make_tensor_value_info(w.name, onnx.TensorProto.FLOAT, list(w.dims))
                      for w in weights]
    out = onnx.ModelProto()
    for field_name in ('ir_version', 'producer_name', 'producer_version', 'domain', 'model_version',
                       'doc_string'):
        setattr(out, field_name, getattr(model, field_name))
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(helper.make_graph(
        nodes, graph.name, [*data, *weight_inputs], list(graph.output), initializer=kept,
        doc_string=graph.doc_string, value_info=list(graph.value_info)))
    helper.set_model_props(out, {'autodice.zoo': name, 'autodice.seed': str(seed)})
    return ZooModel(name, out, weights)

