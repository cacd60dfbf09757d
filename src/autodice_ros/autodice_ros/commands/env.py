"""``autodice env``: the environment autodice runs in, for shells, tests and tools.

``eval "$(.venv/bin/autodice env)"`` sets it in a shell; ``autodice env -- CMD ...`` runs CMD in
it (what ``make test`` does), so nothing ever needs to source ``install/setup.bash`` here.
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

EXPORTED = ('AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH', 'LD_LIBRARY_PATH', 'PYTHONPATH', 'PATH',
            'RMW_IMPLEMENTATION', 'FASTDDS_DEFAULT_PROFILES_FILE', 'GLIBC_TUNABLES',
            '_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'AUTODICE_WORKSPACE', 'AUTODICE_ENV_READY')


def main(argv: Sequence[str]) -> int:
    args = list(argv[1:])
    if args[:1] in (['-h'], ['--help']):
        print('usage: autodice env [-- COMMAND [ARG ...]]\n\n'
              'Without a command: print `export` lines for a POSIX shell.\n'
              'With one: run it in the environment (replaces this process).')
        return 0
    if args and args[0] == '--':
        args = args[1:]
    if args:
        try:
            os.execvp(args[0], args)
        except OSError as exc:
            print(f'autodice env: error: cannot run {args[0]!r}: {exc.strerror}', file=sys.stderr)
            return 127
    for var in EXPORTED:
        if var in os.environ:
            print(f'export {var}={shlex.quote(os.environ[var])}')
    return 0
