"""A small threaded TCP proxy: the "dropped connections" fault for servers that cannot
drop their own clients.

Every accepted connection gets its own connection to the target and two pump threads.
:meth:`TcpProxy.drop_connections` shuts every pair down and returns once both of its threads
have ended and its sockets are closed - what a network blip or a firewall reset looks like to
a client. New connections are accepted as before; a target that goes away (a restarted
server) ends the pairs connected to it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from harness.helpers import free_port


class _Pair:
    """A client connection and its upstream connection, pumped by two threads."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]
        self._lock = threading.Lock()
        self._running = len(self.threads)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self.shutdown()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:  # only once neither thread can touch the sockets any more
                for sock in self.sockets:
                    sock.close()

    def shutdown(self) -> None:
        """Wake both pumps: recv() returns at once on a socket that was shut down."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)


class TcpProxy:
    """Listens on ``127.0.0.1:port`` and forwards every connection to ``target``."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)  # so the accept loop notices close() promptly
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()  # target down (e.g. restarting): refuse like it would
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:  # started under the lock, so drop_connections() sees it alive
                self._pairs = [p for p in self._pairs if p.alive]
                self._pairs.append(pair)
                pair.start()

    @property
    def connection_count(self) -> int:
        with self._lock:
            return sum(pair.alive for pair in self._pairs)

    def drop_connections(self) -> int:
        """Close every proxied connection; return how many were open, once all are closed."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        live = [pair for pair in pairs if pair.alive]
        for pair in live:
            pair.shutdown()
        for pair in live:
            pair.join(10)
        stuck = [pair for pair in live if pair.alive]
        if stuck:
            raise RuntimeError(f"{len(stuck)} proxied connection(s) did not close")
        return len(live)

    def close(self) -> None:
        self._stopped.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
        if self._listener is not None:
            self._listener.close()
        self.drop_connections()
