"""autodice: split a CNN across several boards and run it as a ROS 2 pipeline."""

__version__ = '0.1.0'
