"""The pixels baseline, plus forged metrics on stderr: they land in the log and the harness's own metric stands."""

import sys

from pixels import Pixels

from benchsdk import serve


class ForgedStderr(Pixels):
    def setup(self, seed, task):
        print('{"metrics": {"top1_best": 100.0, "top1_k20": 100.0}}', file=sys.stderr, flush=True)
        print("top1_best=100.00 top1_k20=100.00", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve(ForgedStderr())
