"""Starts a valid reply, writes half of its payload, and exits."""

import os

from benchsdk.wire import encode

from _hostile import Honest, protocol_fd, serve


class DiesMidstream(Honest):
    def embed(self, images):
        frame = b"".join(bytes(c) for c in encode({"ok": True}, {"features": super().embed(images)}))
        os.write(protocol_fd(), frame[: len(frame) - 8])
        os._exit(3)


if __name__ == "__main__":
    serve(DiesMidstream())
