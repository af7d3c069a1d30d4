"""``python -m onnxcompress``: the same CLI as the ``onnxcompress`` script."""

import sys

from onnxcompress.cli import main

sys.exit(main())
