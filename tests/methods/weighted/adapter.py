"""Test method weighted: the behaviour tests/methods/_misbehave/misbehave.py gives a folder of that name."""

from misbehave import Misbehave, main


class Weighted(Misbehave):
    pass


if __name__ == "__main__":
    main(Weighted())
