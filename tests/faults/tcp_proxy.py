"""A TCP forwarder on loopback that a test can stall and move, standing in for the network.

- As a **movable endpoint** (ElastiCache's primary endpoint): `switch_to(port)` drops every
  open connection, as the dead primary's do, and sends new ones to the promoted replica.
- As a **replication link**: `stall()` stops forwarding in both directions without closing
  anything, as a congested or partitioned link does; `resume()` lets the bytes through again.
- As a **slow link**: `throttle(bytes_per_s)` forwards each connection's bytes at that steady
  rate, in slices of THROTTLE_SLICE_S (as a link of that bandwidth delivers them: a little at
  a time, never a long silence); `throttle(None)` lifts it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

CHUNK = 64 * 1024
POLL_S = 0.02
# A throttled connection forwards at most a slice's worth of its rate at a time, then waits
# the slice out.
THROTTLE_SLICE_S = 0.01


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.bytes_per_s: int | None = None
        self.connections: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def throttle(self, bytes_per_s: int | None) -> None:
        """Forward each open and future connection at `bytes_per_s` (None: as fast as it can)."""
        self.bytes_per_s = bytes_per_s

    def switch_to(self, target_port: int) -> None:
        with self.lock:
            self.target_port = target_port
            self._drop_connections()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            self._drop_connections()
        self.flowing.set()

    def _drop_connections(self) -> None:
        for pair in self.connections:
            for sock in pair:
                _close(sock)
        self.connections.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                if self.closed:
                    _close(client)
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
                except OSError:
                    _close(client)
                    continue
                self.connections.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Both directions of one connection; while stalled, nothing is read, so the kernel's
        buffers fill and the senders block, as on a real stalled link."""
        peers = {client: upstream, upstream: client}
        try:
            while True:
                self.flowing.wait()
                readable, _, _ = select.select(list(peers), [], [], POLL_S)
                if not self.flowing.is_set():
                    continue
                for sock in readable:
                    rate = self.bytes_per_s
                    data = sock.recv(CHUNK if rate is None else _slice_bytes(rate))
                    if not data:
                        return
                    peers[sock].sendall(data)
                    if rate is not None:
                        time.sleep(len(data) / rate)
        except (OSError, ValueError):
            return  # dropped by switch_to or close, or the peer went away
        finally:
            _close(client)
            _close(upstream)


def _slice_bytes(bytes_per_s: int) -> int:
    return max(1, min(CHUNK, int(bytes_per_s * THROTTLE_SLICE_S)))


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
