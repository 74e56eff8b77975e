"""Test method hoarder: the behaviour tests/methods/_misbehave/misbehave.py gives a folder of that name."""

from misbehave import Misbehave, main


class Hoarder(Misbehave):
    pass


if __name__ == "__main__":
    main(Hoarder())
