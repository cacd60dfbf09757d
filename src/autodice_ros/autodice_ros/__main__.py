"""``python -m autodice_ros`` (what ``.venv/bin/autodice`` runs)."""
import sys

from autodice_ros.environment import reexec_if_needed

reexec_if_needed(['-m', 'autodice_ros', *sys.argv[1:]])

from autodice_ros.cli import main  # noqa: E402 - after the one re-exec, not before

sys.exit(main())
