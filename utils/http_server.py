"""uvicorn, with the limits a public teacher API needs (docs/SERVING.md,
"Limits and slow clients"). uvicorn alone caps neither open connections nor
the time a client may take to send its request: its keep-alive timer restarts
on every byte, so a client sending one header line a minute holds a socket
for as long as it likes. DeadlineProtocol adds both:
- at most `max_connections` are open: one more makes room by closing the
  connection that has waited longest without sending a request header (503),
  or, when every connection is busy with a request, is itself answered 503;
  so an idle flood holds at most the cap of file descriptors and never locks
  a new client out;
- a request must arrive whole (headers and body) within `request_timeout`
  seconds of the connection opening, or of the previous answer on a kept-alive
  connection; a late one is answered 408 and closed. The body is then never
  handed on in part, so nothing is billed for it.
Between requests an idle kept-alive connection closes after `keep_alive` s.
"""
import asyncio
import json
import logging
import socket
import threading
from typing import NamedTuple

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("serve_teacher")
BACKLOG = 1024  # connections the kernel queues before they are accepted (and counted against the cap); no file each


class Limits(NamedTuple):
    max_connections: int = 64  # open at once; each costs a file descriptor
    request_timeout: float = 10.0  # seconds to send a whole request: inside a client's 15.5 s of retries
    keep_alive: float = 5.0  # seconds an idle kept-alive connection stays open


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole JSON error answer, written straight to a socket that closes next
    (outside h11, whose state machine has no answer before a request)."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a whole-request
    deadline. The limits are class attributes of the subclass that
    TeacherServer makes (uvicorn builds one protocol object per connection)."""
    limits = Limits()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline, self._answered, self._armed_at = None, None, 0.0  # timer; last answered cycle; when armed
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._refuse(503, "Service Unavailable", f"the server has {self.limits.max_connections} connections "
                                                     "open, its limit, all of them sending or awaiting an answer; "
                                                     "try again shortly")
            return
        self._arm()

    def _make_room(self) -> bool:
        """At the cap, close the connection that has waited longest without
        sending a whole request header (an idle or slow one), so that idle
        sockets can never lock a new client out. False if every connection
        is busy with a request."""
        waiting = [c for c in self.connections if c is not self and c._waiting()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._armed_at)
        oldest._refuse(503, "Service Unavailable", "this connection sent no request while the server was at its "
                                                   "connection limit, and was closed for another; nothing was billed")
        return True

    def _waiting(self) -> bool:
        """Armed and no request header in yet: idle, or sending its header slowly."""
        return (self._deadline is not None and self.cycle is self._answered
                and not self.transport.is_closing())

    def _arm(self) -> None:
        """Start the clock for the next request on this connection."""
        self._disarm()
        self._answered, self._armed_at = self.cycle, self.loop.time()
        self._deadline = self.loop.call_later(self.limits.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        received = self.cycle is not None and self.cycle is not self._answered and not self.cycle.more_body
        if received:  # the whole request is in: what follows is the server's time, not the client's
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # before uvicorn hands on a pipelined request, which may already be whole
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle is not self._answered:
            self.cycle.disconnected = True  # the handler reading the body sees the client gone: nothing billed
            self.cycle.message_event.set()
        log.warning("a client at %s did not send its whole request within %g s: answered 408 and closed",
                    self.client and self.client[0], self.limits.request_timeout)
        self._refuse(408, "Request Timeout", f"the whole request must arrive within {self.limits.request_timeout:g} "
                                             "seconds; nothing was billed")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(raw_error(status, reason, message))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers to malformed HTTP (a Content-Length that is not
        a number, a bad header line), as a JSON error like every other."""
        log.warning("malformed HTTP from %s: answered 400", self.client and self.client[0])
        self._refuse(400, "Bad Request", "malformed HTTP request (check the request line, the headers and "
                                         "Content-Length); nothing was billed")


def open_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket; OSError if the address cannot be had."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=backlog)


class TeacherServer:
    """An ASGI app under uvicorn on a socket bound at construction (port 0
    picks a free port: server_address says which). serve_forever() blocks,
    in any thread; shutdown() stops it from another."""

    def __init__(self, app, host: str, port: int, limits: Limits):
        self.socket = open_socket(host, port, BACKLOG)
        self.server_address = self.socket.getsockname()[:2]
        protocol = type("BoundDeadlineProtocol", (DeadlineProtocol,), {"limits": limits})
        config = uvicorn.Config(app, http=protocol, loop="asyncio", lifespan="off", log_config=None,
                                access_log=False, timeout_keep_alive=limits.keep_alive,
                                timeout_graceful_shutdown=5, backlog=BACKLOG)
        self.server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()


def run_blocking(server: TeacherServer) -> None:
    """serve_forever() until Ctrl-C (uvicorn turns SIGINT into a clean stop)."""
    try:
        server.serve_forever()
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        server.server_close()
