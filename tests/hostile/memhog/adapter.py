"""Allocates 32 MiB at a time, touching every page, until the memory limit's OOM killer ends it."""

import numpy as np

from _hostile import Honest, serve


class MemHog(Honest):
    def embed(self, images):
        hog = []
        while True:
            hog.append(np.ones(32 << 20, np.uint8))


if __name__ == "__main__":
    serve(MemHog())
