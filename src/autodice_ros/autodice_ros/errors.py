"""Exception classes: each names the file, node, tensor or field at fault in its message.

The CLI turns any ``AutodiceError`` into one line on stderr and a non-zero exit; nodes log it
and drop the message. Nothing else in the package raises bare ``Exception`` for bad input.
"""


class AutodiceError(Exception):
    """Base class of every error autodice reports to a user."""


class ModelError(AutodiceError):
    """An ONNX model cannot be read or is outside what autodice supports."""


class MappingError(AutodiceError):
    """A mapping (AutoDiCE JSON, YAML or --cuts) is malformed or does not fit the model."""


class SplitError(AutodiceError):
    """A partition cannot be turned into a valid sub-model."""


class BundleError(AutodiceError):
    """A deployment bundle or its manifest is missing, tampered with or of an unknown version."""


class TensorError(AutodiceError):
    """A tensor message does not decode, or does not match what the receiver expects."""

    reason = 'invalid'      # the drop counter a node files it under


class ImageError(AutodiceError):
    """A sensor_msgs/Image cannot be turned into the model's input tensor."""


class BoardsError(AutodiceError):
    """Board emulation (network namespaces, cgroups) cannot be set up."""


class FrameDroppedError(TensorError):
    """A frame was announced but is gone before it could be read (its shared-memory slot was reused)."""

    reason = 'overwritten'


class UndecodableError(TensorError):
    """A message on a tensor topic does not even deserialize (random bytes, a truncated sequence)."""

    reason = 'undecodable'


class StaleFrameError(TensorError):
    """A frame arrived later than its QoS lifespan allows (a link outage, a backlog): dropped."""

    reason = 'stale'
