"""Needs a PyPI package (tabulate) that the base image lacks: installed at build time from the host's wheelhouse."""

import sys

import tabulate

from _hostile import Honest, serve

if __name__ == "__main__":
    print(f"needs_pypi: tabulate {tabulate.__version__} from {tabulate.__file__}", file=sys.stderr)
    serve(Honest())
