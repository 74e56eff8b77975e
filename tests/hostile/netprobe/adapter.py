"""Tries every way out to the network, logs each attempt, then answers; feature 3 counts what it reached."""

import socket
import sys

from _hostile import Honest, serve

TARGETS = [("127.0.0.1", 5000), ("172.17.0.1", 5000), ("172.17.0.1", 2375), ("8.8.8.8", 53), ("151.101.0.223", 443)]


def attempt(what, fn):
    try:
        fn()
        print(f"netprobe: {what}: REACHED", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"netprobe: {what}: {type(e).__name__}: {e}", file=sys.stderr)
        return 0


def probe():
    reached = attempt("dns pypi.org", lambda: socket.getaddrinfo("pypi.org", 443))
    for host, port in TARGETS:
        reached += attempt(f"tcp {host}:{port}", lambda: socket.create_connection((host, port), timeout=3).close())
    reached += attempt(
        "udp 8.8.8.8:53", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
    )
    return reached


class NetProbe(Honest):
    def setup(self, seed, task):
        self.reached = probe()

    def embed(self, images):
        out = super().embed(images)
        out[:, 3] = self.reached
        return out


if __name__ == "__main__":
    serve(NetProbe())
