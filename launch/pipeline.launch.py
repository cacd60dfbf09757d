"""Start one board's share of an autodice pipeline.

    ros2 launch autodice_ros pipeline.launch.py bundle:=/path/to/bundle board:=nx01

Every board of the robot runs this with its own ``board:=``; DDS connects them. Without
``board:=`` every partition runs on this machine. The node list comes from
``autodice_ros.plan.make_plan`` -- the same plan ``autodice run`` executes -- so the arguments
below are exactly the plan options (see ``ros2 launch ... --show-args``), plus ``respawn``:
launch's own restart of a node that exits (``autodice run --restart on-failure`` restarts
faster, from a warm spare, and cleans up the dead process's shared memory).
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from autodice_ros.plan import make_plan, option_fields, options_from_strings
from launch import LaunchDescription


def _arg_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _nodes(context, *args, **kwargs):
    names = [name for name, _, _, _ in option_fields()]
    values = {name: LaunchConfiguration(name).perform(context) for name in names}
    bundle = LaunchConfiguration('bundle').perform(context)
    specs = make_plan(bundle, options_from_strings(values))
    respawn = LaunchConfiguration('respawn').perform(context).lower() in ('true', '1', 'yes')
    return [
        Node(package=spec.package, executable=spec.executable, name=spec.name,
             namespace=spec.namespace, parameters=[dict(spec.parameters)],
             remappings=list(spec.remappings), additional_env=dict(spec.env), output='screen',
             ros_arguments=['--enclave', spec.enclave] if spec.enclave else None,
             respawn=respawn, respawn_delay=0.0)
        for spec in specs
    ]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument('bundle', description='bundle directory (autodice split -o)')]
    arguments += [DeclareLaunchArgument(name, default_value=_arg_text(default), description=help_text)
                  for name, _, default, help_text in option_fields()]
    arguments.append(DeclareLaunchArgument(
        'respawn', default_value='false',
        description='restart a node that exits (launch respawn; autodice run --restart on-failure '
                    'is the runner\'s equivalent)'))
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
