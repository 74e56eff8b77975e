"""One row too few."""

from _hostile import Honest, serve


class WrongCount(Honest):
    def embed(self, images):
        return super().embed(images)[:-1]


if __name__ == "__main__":
    serve(WrongCount())
