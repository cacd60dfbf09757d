"""rosbag2 files without rosbag2_py: the ``rosbags`` library holds the container (sqlite3 or
mcap), rclpy's own serializer the payload, so messages are byte-for-byte what ROS 2 writes.

Custom types (``autodice_msgs``) are registered in the bag from their ``.msg`` text, which gives
the same RIHS01 type hash rosidl computes, so ``ros2 bag info/play`` on a robot read them.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autodice_ros.errors import AutodiceError

STORAGES = ('sqlite3', 'mcap')
IMAGE_TYPE = 'sensor_msgs/msg/Image'


class BagError(AutodiceError):
    """A bag cannot be read or written."""


def _msg_definition_dir(package: str) -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(package)) / 'msg'


def typestore_with(packages: tuple[str, ...] = ('autodice_msgs',)) -> Any:
    """The ROS 2 Kilted typestore plus our own message packages (from their installed .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    for package in packages:
        types: dict[str, Any] = {}
        for path in sorted(_msg_definition_dir(package).glob('*.msg')):
            types.update(get_types_from_msg(path.read_text(), f'{package}/msg/{path.stem}'))
        store.register(types)
    return store


def message_class(msgtype: str) -> Any:
    """The rclpy class of 'pkg/msg/Name' (rosidl_runtime_py does not install here)."""
    import importlib

    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f'message type {msgtype} is not installed: {exc}') from exc


def msgtype_of(msg: Any) -> str:
    return f'{msg.__class__.__module__.split(".")[0]}/msg/{msg.__class__.__name__}'


def read_messages(path: Path, msgtype: str, topic: str | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, rclpy message) of every ``msgtype`` message in a rosbag2 directory."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    cls = message_class(msgtype)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:   # rosbags raises several unrelated types for unreadable bags
        raise BagError(f'{path}: not a readable rosbag2 bag: {exc}') from exc
    try:
        conns = [c for c in reader.connections
                 if c.msgtype == msgtype and (topic is None or c.topic == topic)]
        if not conns:
            found = ', '.join(sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections}))
            raise BagError(f'{path}: no {msgtype} messages{f" on {topic}" if topic else ""} '
                           f'(the bag has: {found or "nothing"})')
        for conn, timestamp, raw in reader.messages(connections=conns):
            yield conn.topic, timestamp, deserialize_message(bytes(raw), cls)
    finally:
        reader.close()


class BagWriter:
    """Writes rclpy messages into a new rosbag2 directory (``path`` must not exist yet)."""

    def __init__(self, path: Path, storage: str = 'sqlite3') -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f'{path}: storage {storage!r} is not one of {", ".join(STORAGES)}')
        if path.exists():
            raise BagError(f'{path}: already exists; rosbag2 writes a new directory')
        plugin = StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP
        self._store = typestore_with()
        self._writer = Writer(path, version=9, storage_plugin=plugin)
        try:
            self._writer.open()
        except Exception as exc:
            raise BagError(f'{path}: cannot create the bag: {exc}') from exc
        self._connections: dict[str, Any] = {}

    def write(self, topic: str, timestamp_ns: int, msg: Any) -> None:
        from rclpy.serialization import serialize_message

        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype_of(msg), typestore=self._store)
            self._connections[topic] = conn
        self._writer.write(conn, timestamp_ns, serialize_message(msg))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
