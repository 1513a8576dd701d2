"""``python -m lstm_stream`` is the ``lstm-stream`` command."""

import sys

from lstm_stream.cli.main import main

sys.exit(main())
