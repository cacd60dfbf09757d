"""Verify a bundle: its chained sub-models compute what the whole model computes.

:func:`run_chain` runs a bundle's partitions in partition-graph order, passing tensors by name,
exactly as the pipeline does over DDS; the runtime tests and benchmarks call it too.
:func:`verify_bundle` checks every sub-model's sha256, then compares the chain with the whole
model (ONNX Runtime, the same session settings) on seeded random inputs.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autodice_ros.errors import BundleError
from autodice_ros.inference import create_session, run_session
from autodice_ros.manifest import (
    Bundle,
    Partition,
    TensorEntry,
    check_partition_file,
    load_bundle,
    sha256_file,
)

TOLERANCE = 1e-4        # relative: max |chain - whole| / max |whole|


def random_inputs(entries: Sequence[TensorEntry], seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for ``entries``: standard normal floats, small integers, random booleans."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for entry in entries:
        dtype = np.dtype(entry.dtype)
        if dtype.kind == 'f':
            out[entry.name] = rng.standard_normal(entry.shape).astype(dtype)
        elif dtype.kind == 'b':
            out[entry.name] = rng.random(entry.shape) < 0.5
        else:
            out[entry.name] = rng.integers(0, 10, entry.shape).astype(dtype)
    return out


def partition_order(bundle: Bundle) -> list[Partition]:
    """The partitions in an order where each follows the producers of its inputs."""
    manifest = bundle.manifest
    produced = {t.name for t in manifest.inputs}
    waiting = list(manifest.partitions)
    order: list[Partition] = []
    while waiting:
        ready = next((p for p in waiting if all(t.name in produced for t in p.inputs)), None)
        if ready is None:
            missing = next(t.name for p in waiting for t in p.inputs if t.name not in produced)
            raise BundleError(f'{bundle.root}: no partition produces tensor {missing!r} before it is '
                              f'needed (cyclic or incomplete partition graph)')
        order.append(ready)
        waiting.remove(ready)
        produced.update(t.name for t in ready.outputs)
    return order


def open_sessions(bundle: Bundle, check_hashes: bool = True) -> dict[str, Any]:
    """One ONNX Runtime session per partition (threads and provider from the manifest)."""
    sessions = {}
    for part in bundle.manifest.partitions:
        path = check_partition_file(bundle, part) if check_hashes else bundle.model_path(part)
        sessions[part.name], _ = create_session(path, part.threads, part.provider)
    return sessions


def run_chain(bundle: Bundle, inputs: Mapping[str, np.ndarray],
              sessions: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The model's outputs computed by the bundle's sub-models, one after another.

    ``inputs`` maps the model's input names to arrays; pass ``sessions`` (from
    :func:`open_sessions`) to reuse them across calls.
    """
    manifest = bundle.manifest
    if sessions is None:
        sessions = open_sessions(bundle)
    tensors: dict[str, np.ndarray] = {}
    for entry in manifest.inputs:
        if entry.name not in inputs:
            raise BundleError(f'{bundle.root}: no value given for model input {entry.name!r}')
        tensors[entry.name] = inputs[entry.name]
    for part in partition_order(bundle):
        results = run_session(sessions[part.name], {t.name: tensors[t.name] for t in part.inputs})
        for entry in part.outputs:
            value = results[entry.name]
            if tuple(value.shape) != entry.shape or value.dtype != np.dtype(entry.dtype):
                raise BundleError(f'{bundle.model_path(part)}: output {entry.name!r} is '
                                  f'{value.dtype}{list(value.shape)}, the manifest says '
                                  f'{entry.dtype}{list(entry.shape)}')
            tensors[entry.name] = value
    return {entry.name: tensors[entry.name] for entry in manifest.outputs}


@dataclass(frozen=True)
class OutputError:
    """How far the chain's output is from the whole model's, over all inputs tried."""

    name: str
    max_abs: float
    relative: float             # max_abs / max |whole model's output|

    @property
    def ok(self) -> bool:
        return self.relative <= TOLERANCE


@dataclass(frozen=True)
class Report:
    bundle: Path
    model: Path
    inputs: int
    outputs: tuple[OutputError, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)


def whole_model_path(bundle: Bundle, model: str | os.PathLike[str] | None = None) -> Path:
    """The source model (``model`` if given), after checking it is the one the bundle was cut from."""
    path = Path(model) if model is not None else Path(bundle.manifest.model.path)
    if not path.is_file():
        raise BundleError(f'{path}: the source model of {bundle.root} is missing (give --model PATH)')
    if sha256_file(path) != bundle.manifest.model.sha256:
        raise BundleError(f'{path}: sha256 differs from the model {bundle.root} was cut from')
    return path


def compare(bundle: Bundle, whole: Any, inputs: int = 1, seed: int = 0,
            sessions: Mapping[str, Any] | None = None) -> tuple[OutputError, ...]:
    """How far the chain is from ``whole`` (a session of the source model) on seeded inputs."""
    if sessions is None:
        sessions = open_sessions(bundle)
    worst = {e.name: (0.0, 0.0) for e in bundle.manifest.outputs}      # max abs diff, max |ref|
    for i in range(inputs):
        feeds = random_inputs(bundle.manifest.inputs, seed + i)
        reference = run_session(whole, feeds)
        chained = run_chain(bundle, feeds, sessions)
        for name, value in chained.items():
            ref = reference[name]
            diff = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
            diff = diff if np.isfinite(diff) else np.inf            # NaN must not compare as small
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            worst[name] = (max(worst[name][0], diff), max(worst[name][1], scale))
    return tuple(OutputError(name, diff, diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf))
                 for name, (diff, scale) in worst.items())


def verify_bundle(root: str | os.PathLike[str], inputs: int = 1,
                  model: str | os.PathLike[str] | None = None, seed: int = 0) -> Report:
    """Check hashes, then compare the chained sub-models with the whole model on seeded inputs."""
    if inputs < 1:
        raise BundleError(f'--inputs {inputs}: need at least 1')
    bundle = load_bundle(root)
    source = whole_model_path(bundle, model)
    sessions = open_sessions(bundle, check_hashes=True)
    whole, _ = create_session(source, 1)
    return Report(Path(root), source, inputs, compare(bundle, whole, inputs, seed, sessions))
