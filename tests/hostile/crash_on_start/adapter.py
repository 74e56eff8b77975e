"""Dies at start-up, as an adapter whose weights are missing would."""

import sys

sys.exit("crash_on_start: weights not found at /weights/model.pt")
