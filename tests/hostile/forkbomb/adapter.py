"""A real fork bomb (every child forks too) on the first batch; the adapter then reports how far it got."""

import os
import time

from _hostile import Honest, serve


class ForkBomb(Honest):
    def embed(self, images):
        made, error = 0, None
        try:
            while True:
                if os.fork() == 0:  # child: bomb on, then wait to be killed with the container
                    try:
                        while True:
                            os.fork()
                    except OSError:
                        pass
                    time.sleep(3600)
                    os._exit(0)
                made += 1
        except OSError as e:
            error = e
        raise RuntimeError(f"fork bomb stopped: fork failed ({error.strerror}) after {made} forks of the adapter")


if __name__ == "__main__":
    serve(ForkBomb())
