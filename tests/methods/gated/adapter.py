"""Test method gated: the behaviour tests/methods/_misbehave/misbehave.py gives a folder of that name."""

from misbehave import Misbehave, main


class Gated(Misbehave):
    pass


if __name__ == "__main__":
    main(Gated())
