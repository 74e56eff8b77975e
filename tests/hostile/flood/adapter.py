"""Writes a reply header announcing a 16 GiB array straight into the protocol stream, then zeros without end."""

import json
import os
import struct

from _hostile import Honest, protocol_fd, serve


class Flood(Honest):
    def embed(self, images):
        header = json.dumps(
            {
                "ok": True,
                "arrays": [{"name": "features", "dtype": "float32", "shape": [len(images), (1 << 32) // len(images)]}],
            }
        ).encode()
        os.write(protocol_fd(), b"VRB1" + struct.pack("<I", len(header)) + header)
        zeros = bytes(1 << 20)
        while True:
            os.write(protocol_fd(), zeros)


if __name__ == "__main__":
    serve(Flood())
