"""A loopback TCP forwarder run as a separate process (ConnectorX holds the GIL
while it connects, so an in-process proxy thread would stall it).

Usage: python tcp_forwarder.py TARGET_HOST TARGET_PORT; prints its port, then
SIGUSR1 cuts every connection and refuses new ones, SIGUSR2 accepts again.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

up = threading.Event()
up.set()
socks: list[socket.socket] = []
lock = threading.Lock()


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def drop(*_: object) -> None:
    up.clear()
    with lock:
        doomed = list(socks)
        socks.clear()
    for s in doomed:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def main() -> None:
    target = (sys.argv[1], int(sys.argv[2]))
    listener = socket.create_server(("127.0.0.1", 0))
    signal.signal(signal.SIGUSR1, drop)
    signal.signal(signal.SIGUSR2, lambda *_: up.set())
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        if not up.is_set():
            client.close()
            continue
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        with lock:
            socks.extend((client, upstream))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main()
