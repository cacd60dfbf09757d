"""A warm spare for ``autodice run --restart on-failure``: a node process started before it is needed.

A stage restarted from nothing spends most of its outage before its first frame: importing
rclpy, numpy and ONNX Runtime (0.3-0.8 s on a small board), then DDS discovery of the new
participant (0.5-1.4 s measured, see the README). A spare does both ahead of time: it imports
every node module, starts rclpy with a placeholder node (so its DDS participant is discovered by
the running pipeline), then blocks on stdin. The runner hands it the failed node's command line
as one JSON line (``[executable, *ros_arguments]``) and the spare becomes that node; the runner
then starts the next spare. End of input or SIGINT: the spare exits without ever being used.

Only nodes whose ``main`` runs through :func:`autodice_ros.nodes.common.spin_node` can be
adopted (see :data:`ADOPTABLE`); others, and nodes with an SROS2 enclave (a process-wide
setting), are restarted cold.
"""
from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence

ADOPTABLE = ('stage', 'camera_head', 'tail', 'image_source')


def command_line(executable: str, ros_arguments: Sequence[str]) -> bytes:
    """What the runner writes to a spare's stdin to make it ``executable``."""
    if executable not in ADOPTABLE:
        raise ValueError(f'{executable}: a spare cannot become this node')
    return (json.dumps([executable, *ros_arguments]) + '\n').encode()


def main() -> int:
    import rclpy

    from autodice_ros.nodes import common

    modules = {name: importlib.import_module(f'autodice_ros.nodes.{name}') for name in ADOPTABLE}
    try:
        common.warm_up()
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        line = ''
    if not line:                  # the runner stopped (or is gone) before needing this spare
        rclpy.try_shutdown()
        return 0
    executable, *ros_arguments = json.loads(line)
    module = modules[executable]
    sys.argv = [module.__file__ or executable, *ros_arguments]
    return int(module.main(sys.argv))


if __name__ == '__main__':
    raise SystemExit(main())
