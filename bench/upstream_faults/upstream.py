#!/usr/bin/env python3
"""A controllable HTTP/1.1 upstream for bench/upstream_faults (the host that goes bad).

It answers every request `200 ok` (keep-alive, pipelining-safe, no request bodies) and can
be switched at runtime between modes:

  healthy  200 to everything
  half     503 to half of the requests, drawn from a seeded generator reset at the switch
           (so every proxy sees the same sequence); health checks (--health-path) draw
           from a second generator, so they do not shift the requests' sequence
  closed   the listening socket is closed and every open connection reset (SO_LINGER 0):
           new connections are refused
  slow     200 after --slow-ms (default 50 ms)

Control: HTTP on --control PORT, `GET /mode/<mode>` switches and `GET /stats` reads; both
answer JSON with the mode, the counts since the last switch (`requests` excludes health
checks, counted in `checks`) and `first_failure`, the CLOCK_MONOTONIC time
(time.monotonic(), comparable across processes) of the first 503 served, or of the close,
since the last switch (null before one); `first_failure_request` is `requests` then, and
`streak_at` the time the --streak'th 503 in a row was sent (what consecutive_5xx ejects on). SIGUSR1 cycles
healthy -> half -> closed -> healthy for use by hand.

  upstream.py --port 18301 --control 18309
  curl -s 127.0.0.1:18309/mode/half
"""

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import time

MODES = ("healthy", "half", "closed", "slow")
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-host: b\r\ncontent-length: 2\r\n\r\nok"
UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
               b"content-length: 11\r\n\r\nunavailable")


class State:
    def __init__(self, args):
        self.args = args
        self.mode = "healthy"
        self.server = None
        self.conns = set()
        self.reset_counts()

    def reset_counts(self):
        self.rng = random.Random(self.args.seed)
        self.hc_rng = random.Random(self.args.seed + 1)
        self.requests = 0
        self.failed = 0
        self.checks = 0
        self.checks_failed = 0
        self.first_failure = None
        self.first_failure_request = None
        self.streak = 0
        self.streak_at = None
        self.switched_at = time.monotonic()

    def stats(self):
        return {
            "mode": self.mode,
            "switched_at": self.switched_at,
            "first_failure": self.first_failure,
            "first_failure_request": self.first_failure_request,
            "streak_at": self.streak_at,
            "requests": self.requests,
            "failed": self.failed,
            "checks": self.checks,
            "checks_failed": self.checks_failed,
        }

    async def set_mode(self, mode):
        if mode not in MODES:
            raise ValueError(mode)
        was = self.mode
        self.mode = mode
        self.reset_counts()
        if mode == "closed" and was != "closed":
            self.server.close()
            for c in list(self.conns):
                c.reset()
            self.first_failure = time.monotonic()
            await self.server.wait_closed()
        elif mode != "closed" and was == "closed":
            await self.listen()

    async def listen(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Upstream(self), "127.0.0.1", self.args.port,
            reuse_address=True, backlog=1024)

    def answer(self, path):
        """The response to a request for `path`, and whether to delay it."""
        check = path == self.args.health_path
        if check:
            self.checks += 1
        else:
            self.requests += 1
        if self.mode == "half":
            rng = self.hc_rng if check else self.rng
            if rng.random() < 0.5:
                if check:
                    self.checks_failed += 1
                else:
                    self.failed += 1
                    self.streak += 1
                    if self.streak == self.args.streak and self.streak_at is None:
                        self.streak_at = time.monotonic()
                if self.first_failure is None:
                    self.first_failure = time.monotonic()
                    self.first_failure_request = self.requests
                return UNAVAILABLE, False
        if not check:
            self.streak = 0
        return OK, self.mode == "slow" and not check


class Upstream(asyncio.Protocol):
    def __init__(self, state):
        self.state = state
        self.buf = b""
        self.transport = None
        self.pending = 0  # slow responses not written yet; later ones queue behind them
        self.queue = []

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.state.conns.add(self)

    def connection_lost(self, exc):
        self.state.conns.discard(self)

    def reset(self):
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.transport.abort()

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.abort()
                return
            head = self.buf[:end]
            self.buf = self.buf[end + 4:]
            line = head.split(b"\r\n", 1)[0].split(b" ")
            path = line[1].decode("latin-1") if len(line) > 1 else "/"
            body, slow = self.state.answer(path)
            if slow or self.pending:
                self.pending += 1
                self.queue.append(body)
                delay = self.state.args.slow_ms / 1000 if slow else 0
                asyncio.get_running_loop().call_later(delay, self.flush_one)
            else:
                self.transport.write(body)

    def flush_one(self):
        # Responses leave in request order: each timer writes the oldest queued one.
        if self.queue and not self.transport.is_closing():
            self.transport.write(self.queue.pop(0))
        self.pending -= 1


class Control(asyncio.Protocol):
    def __init__(self, state):
        self.state = state
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        path = self.buf.split(b"\r\n", 1)[0].split(b" ")[1].decode()
        asyncio.ensure_future(self.handle(path))

    async def handle(self, path):
        status = "200 OK"
        try:
            if path.startswith("/mode/"):
                await self.state.set_mode(path[len("/mode/"):])
            elif path != "/stats":
                status = "404 Not Found"
        except ValueError:
            status = "400 Bad Request"
        body = json.dumps(self.state.stats()).encode() + b"\n"
        self.transport.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: "
            f"{len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        self.transport.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--mode", default="healthy", choices=MODES)
    p.add_argument("--slow-ms", type=float, default=50)
    p.add_argument("--health-path", default="/healthz")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--streak", type=int, default=5,
                   help="`streak_at` is when this many 503s in a row (checks aside) were sent")
    args = p.parse_args()
    state = State(args)
    await state.listen()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Control(state), "127.0.0.1", args.control,
                             reuse_address=True)
    if args.mode != "healthy":
        await state.set_mode(args.mode)
    cycle = {"healthy": "half", "half": "closed", "closed": "healthy", "slow": "healthy"}
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: asyncio.ensure_future(state.set_mode(cycle[state.mode])))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError:
        pass  # the loop stopped on SIGTERM
