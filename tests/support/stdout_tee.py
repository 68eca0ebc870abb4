"""Run a command, copying its stdout both to ours and to a file: every byte a stdio MCP client receives.

Usage: python stdout_tee.py COPY_FILE COMMAND [ARGS...]   (stdin and stderr pass straight through)
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    copy_path, command = sys.argv[1], sys.argv[2:]
    with open(copy_path, "wb") as copy:
        child = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert child.stdout is not None
        while chunk := os.read(child.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            copy.write(chunk)
            copy.flush()
        return child.wait()


if __name__ == "__main__":
    sys.exit(main())
