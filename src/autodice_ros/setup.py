"""ament_python build of autodice_ros; launch/ and config/ are linked from the repository root."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'autodice_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    package_data={PACKAGE: ['py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.xml') + glob('config/*.yaml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='autodice developers',
    maintainer_email='autodice@example.com',
    description='Distributed CNN inference over ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'autodice = autodice_ros.cli:main',
            'stage = autodice_ros.nodes.stage:main',
            'stages = autodice_ros.nodes.stages:main',
            'camera_head = autodice_ros.nodes.camera_head:main',
            'tail = autodice_ros.nodes.tail:main',
            'image_source = autodice_ros.nodes.image_source:main',
        ],
    },
)
