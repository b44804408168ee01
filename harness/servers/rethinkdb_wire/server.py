"""The asyncio TCP server: handshake, query framing and dispatch, process-level controls.

Everything runs on one event-loop thread.  Each connection reads queries in order and
answers each one as soon as it is evaluated; changefeed CONTINUEs are parked in their
:class:`Feed` instead of blocking, so other queries on the same connection go on.

Signals: SIGTERM/SIGINT stop the server; SIGUSR1 drops every client connection (the
server keeps running) and then bumps the ``drops`` counter in the status file.  With
``exit_with_parent`` it also stops when the process that started it goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import traceback
import uuid
from typing import Any

from .feeds import Feed, FeedSpec
from .handshake import Credentials, perform_handshake
from .protocol import (
    HEADER,
    ErrorType,
    QueryError,
    QueryType,
    ResponseType,
    error_response,
    frame,
    response,
)
from .store import SERVER_NAME, Store
from .terms import Evaluator, Stream
from .values import DbRef, to_wire, truthy


class ClientConnection:
    def __init__(
        self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.feeds: dict[int, Feed] = {}
        self.closed = False

    async def serve(self) -> None:
        try:
            if not await perform_handshake(self.reader, self.writer, self.server.credentials):
                await self.writer.drain()
                self.writer.close()
                return
            while not self.closed:
                token, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                self.handle(token, await self.reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.close()

    def send(self, token: int, body: dict[str, Any]) -> None:
        if not self.closed:
            self.writer.write(frame(token, {**body, "r": to_wire(body["r"])}))

    def close(self) -> None:
        """Forget this client's feeds and drop the socket at once."""
        if self.closed:
            return
        self.closed = True
        for feed in list(self.feeds.values()):
            feed.close()
        self.writer.transport.abort()
        self.server.connections.discard(self)

    def handle(self, token: int, payload: bytes) -> None:
        try:
            query = json.loads(payload)
            query_type = query[0]
        except (ValueError, LookupError, TypeError):
            self.client_error(token, "Client is buggy (failed to deserialize query).")
            return
        if query_type == QueryType.START:
            self.start(token, query)
        elif query_type == QueryType.CONTINUE:
            if token in self.feeds:
                self.feeds[token].on_continue()
            else:
                self.client_error(token, f"Token {token} not in stream cache.")
        elif query_type == QueryType.STOP:
            if token in self.feeds:
                self.feeds[token].on_stop()
            self.send(token, response(ResponseType.SUCCESS_SEQUENCE, []))
        elif query_type == QueryType.NOREPLY_WAIT:  # queries run in order: nothing to wait for
            self.send(token, response(ResponseType.WAIT_COMPLETE, []))
        elif query_type == QueryType.SERVER_INFO:
            self.send(
                token,
                response(
                    ResponseType.SERVER_INFO,
                    [{"id": self.server.id, "name": SERVER_NAME, "proxy": False}],
                ),
            )
        else:
            self.client_error(token, f"Unrecognized query type {query_type!r}.")

    def client_error(self, token: int, message: str) -> None:
        self.send(
            token, error_response(QueryError(message, response_type=ResponseType.CLIENT_ERROR))
        )

    def start(self, token: int, query: list) -> None:
        global_optargs = query[2] if len(query) > 2 else {}
        noreply = False
        try:
            evaluator = Evaluator(self.server.store)
            noreply = truthy(evaluator.datum(global_optargs.get("noreply", False), {}))
            if "db" in global_optargs:
                db = evaluator.eval(global_optargs["db"], {})
                if not isinstance(db, DbRef):
                    raise QueryError("Expected type DATABASE for the `db` optarg.")
                evaluator.default_db = db.name
            result = evaluator.run(query[1])
        except QueryError as error:
            if not noreply:
                self.send(token, error_response(error))
            return
        except Exception as exc:  # noqa: BLE001  (a bug in the double: report, keep serving)
            traceback.print_exc(file=sys.stderr)
            if not noreply:
                self.send(
                    token,
                    error_response(
                        QueryError(f"Unexpected exception: {exc!r}", ErrorType.INTERNAL)
                    ),
                )
            return
        if noreply:
            return
        if isinstance(result, FeedSpec):
            feed = Feed(
                result,
                send=lambda body: self.send(token, body),
                forget=lambda: self.feeds.pop(token, None),
            )
            self.feeds[token] = feed
            self.send(token, feed.start())
        elif isinstance(result, Stream):
            self.send(token, response(ResponseType.SUCCESS_SEQUENCE, list(result)))
        else:
            self.send(token, response(ResponseType.SUCCESS_ATOM, [result]))


class WireServer:
    def __init__(
        self,
        host: str,
        port: int,
        password: str = "",
        status_file: str | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        self.host = host
        self.parent_pid = os.getppid() if exit_with_parent else None
        self.port = port
        self.status_file = status_file
        self.credentials = Credentials(password)
        self.store = Store()
        self.id = str(uuid.uuid4())
        self.connections: set[ClientConnection] = set()
        self.drops = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = ClientConnection(self, reader, writer)
        self.connections.add(connection)
        await connection.serve()

    def drop_connections(self) -> None:
        for connection in list(self.connections):
            connection.close()
        self.drops += 1
        self._write_status()

    def _write_status(self) -> None:
        if not self.status_file:
            return
        temporary = f"{self.status_file}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(
                {"pid": os.getpid(), "host": self.host, "port": self.port, "drops": self.drops},
                handle,
            )
        os.replace(temporary, self.status_file)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, self.drop_connections)
        server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        self._write_status()
        print(
            f"rethinkdb_wire: test double listening on {self.host}:{self.port}",
            file=sys.stderr,
            flush=True,
        )
        async with server:
            while not stopping.is_set():
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    break  # the test run that started us is gone: do not linger
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=0.5)
            for connection in list(self.connections):
                connection.close()
