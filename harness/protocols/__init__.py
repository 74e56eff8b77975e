"""Registry of evaluation protocols by name."""

from harness.protocols.hummingbird import HummingbirdProtocol
from harness.protocols.knn import KnnProtocol

PROTOCOLS = {"hummingbird": HummingbirdProtocol, "knn": KnnProtocol}
