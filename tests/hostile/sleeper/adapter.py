"""Sleeps through its first batch: the harness must time it out and kill it."""

import time

from _hostile import Honest, serve


class Sleeper(Honest):
    def embed(self, images):
        time.sleep(3600)


if __name__ == "__main__":
    serve(Sleeper())
