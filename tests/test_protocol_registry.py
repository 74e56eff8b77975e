import pytest

from harness.protocols import PROTOCOLS
from harness.protocols.objseg import ObjsegProtocol


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_declares_its_main_metric_and_direction(name):
    """Each protocol's own end-to-end tests check that run() returns the metric named here."""
    cls = PROTOCOLS[name]
    assert isinstance(vars(cls).get("main_metric"), str)
    assert isinstance(cls.lower_is_better, frozenset) and all(isinstance(m, str) for m in cls.lower_is_better)


def test_higher_is_better_reads_lower_is_better():
    assert not ObjsegProtocol.higher_is_better("mse")
    assert ObjsegProtocol.higher_is_better("miou_fg") and PROTOCOLS["knn"].higher_is_better("top1_best")
