"""A model file plus a mapping -> a deployment bundle: sub-models written, checked and hashed, and
the manifest filled in (topics, partition graph, the head's preprocessing, the tail's postprocessing).

The model is read once, without its weight bytes (:func:`open_model`); each sub-model is written
straight into the bundle's temp dir with its weights copied from the source file, hashed while
written, and passed through ``onnx.checker``'s full check (:func:`~autodice_ros.graph.weights.
check_written`) before the temp dir becomes the bundle. Any failure leaves no bundle behind.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from autodice_ros.errors import SplitError
from autodice_ros.graph.model import ModelGraph, analyze, default_opset
from autodice_ros.graph.weights import LazyArray, LeanModel, check_written, read_lean, write_submodel
from autodice_ros.manifest import (
    DTYPES,
    INPUT_TOPIC,
    Bundle,
    Manifest,
    ModelInfo,
    Partition,
    Postprocess,
    Preprocess,
    TensorEntry,
    derive_edges,
    partition_topic,
    ros_token,
    sha256_file,
    staged_bundle,
    write_manifest,
)
from autodice_ros.mapping import Mapping, mapping_from_cuts
from autodice_ros.split.layerwise import SubModel, cut

LABELS_NAME = 'labels.txt'


@dataclass(frozen=True)
class ImageOptions:
    """Overrides of the head's preprocessing defaults (ImageNet, RGB, the input's own size)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False
    size: tuple[int, int] | None = None     # (height, width), for inputs with symbolic H/W
    scale: float | None = None


def _layout(dims: Sequence[int | str]) -> str:
    """NCHW or NHWC from a 4-d input shape (channels 1 or 3; NCHW when it cannot tell)."""
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
        return 'NHWC'
    return 'NCHW'


def open_model(path: str | os.PathLike[str], size: tuple[int, int] | None = None
               ) -> tuple[LeanModel, ModelGraph]:
    """Read ``path`` once (weights stay on disk) and analyse it; ``size`` fixes a symbolic H/W."""
    lean = read_lean(path)
    dims: dict[str, list[int]] = {}
    if size is not None:
        model = lean.model
        inits = {t.name for t in model.graph.initializer}
        for value in model.graph.input:
            if value.name in inits:
                continue
            shape = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
            if len(shape) == 4:
                dims[value.name] = [0, 0, *size] if _layout(shape) == 'NCHW' else [0, *size, 0]
            break
    return lean, analyze(lean.model, lean.path, dims)


def _entry(graph: ModelGraph, name: str, topic: str) -> TensorEntry:
    found = graph.types.get(name)
    if found is None:
        raise SplitError(f'{graph.where}: shape inference found no type for tensor {name!r}')
    if found.dtype not in DTYPES:
        raise SplitError(f'{graph.where}: tensor {name!r} has type {found.dtype}, which the tensor '
                         f'messages do not carry ({", ".join(DTYPES)})')
    return TensorEntry(name, found.dtype, graph.static_shape(name), topic)


def _preprocess(graph: ModelGraph, image: ImageOptions) -> Preprocess:
    name = graph.inputs[0]
    shape = graph.static_shape(name)
    layout = _layout(shape)
    if len(shape) == 4:
        channels = shape[1] if layout == 'NCHW' else shape[3]
        height, width = (shape[2], shape[3]) if layout == 'NCHW' else (shape[1], shape[2])
    else:
        channels, height, width = 3, 0, 0
    defaults = Preprocess(name)
    mean = image.mean if image.mean is not None else defaults.mean
    std = image.std if image.std is not None else defaults.std
    for option, values in (('--mean', mean), ('--std', std)):
        if len(values) not in (1, channels):
            raise SplitError(f'{option}: {len(values)} values for an input with {channels} channels')
    if any(s == 0 for s in std):
        raise SplitError('--std: a standard deviation of 0')
    if channels == 1 and len(mean) == 3 and image.mean is None:
        mean, std = mean[:1], std[:1]
    return Preprocess(name, layout, height, width, 'bgr' if image.bgr else 'rgb',
                      image.scale if image.scale is not None else defaults.scale, tuple(mean), tuple(std))


def _postprocess(graph: ModelGraph, labels: Path | None) -> tuple[Postprocess, int]:
    """Classification softmax/top-5 for an output of N class scores; else the raw tensors."""
    name = graph.outputs[0]
    shape = graph.static_shape(name)
    wide = [d for d in shape[1:] if d != 1]
    producer = graph.producer.get(name)
    if len(shape) < 2 or shape[0] != 1 or len(wide) != 1 or wide[0] < 2:
        if labels is not None:
            raise SplitError(f'{labels}: labels given, but output {name!r} of shape {list(shape)} is '
                             f'not one row of class scores')
        return Postprocess(name, kind='raw', softmax=False, top_k=0), 0
    ends_in_softmax = producer is not None and graph.nodes[producer].op_type == 'Softmax'
    classes = wide[0]
    return Postprocess(name, softmax=not ends_in_softmax, top_k=min(5, classes),
                       labels=LABELS_NAME if labels is not None else None), classes


def _check_labels(labels: Path, classes: int) -> None:
    try:
        lines = labels.read_text().splitlines()
    except OSError as exc:
        raise SplitError(f'{labels}: cannot read the labels file: {exc.strerror or exc}') from exc
    except UnicodeDecodeError as exc:
        raise SplitError(f'{labels}: the labels file is not text') from exc
    if len(lines) != classes:
        raise SplitError(f'{labels}: {len(lines)} labels, but the model has {classes} classes')


def write_split(lean: LeanModel, graph: ModelGraph, mapping: Mapping, out: str | os.PathLike[str],
                force: bool = False, image: ImageOptions | None = None, labels: Path | None = None,
                strategy: str | None = None) -> Bundle:
    """Cut ``graph`` along ``mapping`` and write the bundle ``out`` atomically.

    Within-layer entries of ``mapping`` are applied first (:func:`autodice_ros.split.within.apply`):
    the rewritten graph is cut, with the new weight slices written next to the copied ones.
    ``strategy`` names the plan in the manifest (default: from the mapping's modes).
    """
    arrays: dict[str, LazyArray] = {}
    if strategy is None:
        strategy = '+'.join(sorted({s.mode for s in mapping.layer_splits})) or 'layer'
    if mapping.layer_splits:
        from autodice_ros.split.within import apply
        graph, mapping, arrays = apply(lean, graph, mapping)
    subs = cut(graph, mapping)
    preprocess = _preprocess(graph, image or ImageOptions())
    postprocess, classes = _postprocess(graph, labels)
    if labels is not None:
        _check_labels(labels, classes)
    producer_part = {name: sub.spec.name for sub in subs for name in sub.outputs}
    model_inputs = tuple(_entry(graph, name, INPUT_TOPIC) for name in graph.inputs)
    model_outputs = tuple(_entry(graph, name, partition_topic(producer_part[name]))
                          for name in graph.outputs)
    files = {sub.spec.name: f'{ros_token(sub.spec.name)}.onnx' for sub in subs}
    with staged_bundle(out, force) as tmp:
        partitions = [_write_partition(lean, graph, sub, tmp / files[sub.spec.name], producer_part, arrays)
                      for sub in subs]
        if labels is not None:
            shutil.copyfile(labels, tmp / LABELS_NAME)
        source = lean.path.resolve()
        manifest = Manifest(
            model=ModelInfo(source.stem, str(source), sha256_file(source), default_opset(lean.model),
                            lean.model.ir_version),
            inputs=model_inputs, outputs=model_outputs, partitions=tuple(partitions),
            preprocess=preprocess, postprocess=postprocess, strategy=strategy,
            edges=derive_edges(model_inputs, partitions, model_outputs))
        write_manifest(tmp, manifest)
    return Bundle(Path(out), manifest)


def _write_partition(lean: LeanModel, graph: ModelGraph, sub: SubModel, path: Path,
                     producer_part: dict[str, str], arrays: dict[str, LazyArray]) -> Partition:
    spec = sub.spec
    copied = [name for name in sub.initializers if name not in arrays]
    made = [arrays[name] for name in sub.initializers if name in arrays]
    written = write_submodel(path, sub.model, lean, copied, made)
    try:
        check_written(written, sub.model, lean, copied, made)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SplitError(f'{graph.where}: partition {spec.name!r} ({path.name}) fails onnx.checker: '
                         f'{first}') from exc
    inputs = tuple(_entry(graph, name, partition_topic(producer_part[name]) if name in producer_part
                          else INPUT_TOPIC) for name in sub.inputs)
    outputs = tuple(_entry(graph, name, partition_topic(spec.name)) for name in sub.outputs)
    return Partition(spec.name, spec.board, path.name, written.sha256, inputs, outputs, spec.provider,
                     spec.threads, spec.cores, spec.nodes)


def mapping_for_boards(graph: ModelGraph, boards: int) -> Mapping:
    """``--boards K``: the whole model as one partition for 1, else the partitioner's K-stage plan."""
    if boards < 1:
        raise SplitError(f'--boards {boards}: need at least 1')
    if boards == 1:
        return mapping_from_cuts([], graph)
    from autodice_ros.partitioner import plan_mapping
    return plan_mapping(graph, boards=boards)
