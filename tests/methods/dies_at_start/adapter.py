"""Test method dies_at_start: the behaviour tests/methods/_misbehave/misbehave.py gives a folder of that name."""

from misbehave import Misbehave, main


class DiesAtStart(Misbehave):
    pass


if __name__ == "__main__":
    main(DiesAtStart())
