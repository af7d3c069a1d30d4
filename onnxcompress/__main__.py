"""``python -m onnxcompress``: the same command line as the ``onnxcompress`` script."""

from __future__ import annotations

import sys

try:
    from onnxcompress.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: one line, no traceback
    print("onnxcompress: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
