"""Prints a forged result where only frames may go: a contract violation."""

import os

from _hostile import STDOUT, Honest, serve

if __name__ == "__main__":
    os.write(STDOUT, b'{"metrics": {"top1_best": 100.0, "top1_k20": 100.0}}\n')
    serve(Honest())
