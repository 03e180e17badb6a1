"""A loopback TCP proxy that breaks responses on purpose: cuts or corrupts them mid-body.

Sits between a storage client and a local server; each connection's server-to-client bytes
are counted, and each time a connection passes another `after` bytes the proxy either closes
it or flips one byte, while faults last. Listens on 127.0.0.1 only and forwards only to 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading

BUFFER = 256 * 1024


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.mode = "pass"
        self.after = 0
        self.faults_left = 0  # -1: every connection that gets far enough
        self.faults_done = 0
        self.bytes_delivered = 0  # server-to-client bytes that reached a client
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set_fault(self, mode: str, after: int = 0, times: int = 1) -> None:
        with self._lock:
            self.mode, self.after, self.faults_left, self.faults_done = mode, after, times, 0
            self.bytes_delivered = 0

    def _take_fault(self) -> bool:
        with self._lock:
            if self.mode == "pass" or self.faults_left == 0:
                return False
            if self.faults_left > 0:
                self.faults_left -= 1
            self.faults_done += 1
            return True

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump_back, args=(server, client), daemon=True).start()

    @staticmethod
    def _close(*sockets) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _pump(self, source, sink) -> None:
        try:
            while data := source.recv(BUFFER):
                sink.sendall(data)
        except OSError:
            pass
        self._close(source, sink)

    def _pump_back(self, server, client) -> None:
        passed = 0
        next_fault_at = self.after
        try:
            while data := server.recv(BUFFER):
                if passed + len(data) > next_fault_at and self.mode != "pass":
                    cut_at = max(next_fault_at - passed, 0)
                    # Kept-alive connections carry many responses: strike again later on.
                    next_fault_at += max(self.after, 1)
                    if self._take_fault():
                        if self.mode == "cut":
                            client.sendall(data[:cut_at])
                            self._delivered(cut_at)
                            break
                        data = bytearray(data)
                        data[cut_at] ^= 0xFF
                        data = bytes(data)
                passed += len(data)
                client.sendall(data)
                self._delivered(len(data))
        except OSError:
            pass
        self._close(server, client)

    def _delivered(self, count: int) -> None:
        with self._lock:
            self.bytes_delivered += count

    def close(self) -> None:
        self._closed = True
        self._listener.close()
