"""Global features of the wrong rank: (N, D, 1)."""

from _hostile import Honest, serve


class WrongShape(Honest):
    def embed(self, images):
        return super().embed(images)[:, :, None]


if __name__ == "__main__":
    serve(WrongShape())
