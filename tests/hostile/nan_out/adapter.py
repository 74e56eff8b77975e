"""NaN in its features."""

import numpy as np

from _hostile import Honest, serve


class NanOut(Honest):
    def embed(self, images):
        out = super().embed(images)
        out[-1, 0] = np.nan
        return out


if __name__ == "__main__":
    serve(NanOut())
