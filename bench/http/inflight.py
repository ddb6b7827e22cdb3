#!/usr/bin/env python3
"""Memory a proxy holds per request in flight.

Runs an upstream that holds every request to `/slow` until all of them have arrived, starts
the proxy (the command after `--`, configured to forward to UP_PORT), opens N client
connections each sending one request through it, and reads the proxy's resident memory
(its process tree's VmRSS) before and once all N are held upstream. Prints the difference
per request: the proxy's connection, request and upstream state, not the kernel's socket
buffers (which are not in RSS).

usage: inflight.py N PROXY_PORT UP_PORT -- proxy command...
"""

import asyncio
import logging
import resource
import subprocess
import sys
import time


def rss_kib(pid):
    """VmRSS of `pid` and its children, in KiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


async def main(n, proxy_port, up_port, command):
    arrived = 0
    release = asyncio.Event()

    async def upstream(reader, writer):
        nonlocal arrived
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.split(b" ", 2)[1] == b"/slow":
                    arrived += 1
                    await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except BaseException:  # the client or the proxy went away
            pass

    server = await asyncio.start_server(upstream, "127.0.0.1", up_port, backlog=4096)
    proxy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Ready once a request goes through.
        deadline = time.time() + 20
        while True:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
                w.write(b"GET /ready HTTP/1.1\r\nhost: h\r\n\r\n")
                await w.drain()
                if b" 200 " in await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2):
                    w.close()
                    break
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            if time.time() > deadline:
                sys.exit(f"{command[0]} did not start")
            await asyncio.sleep(0.1)
        before = rss_kib(proxy.pid)

        async def client():
            r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
            w.write(b"GET /slow HTTP/1.1\r\nhost: h\r\n\r\n")
            await w.drain()
            await r.readuntil(b"\r\n\r\n")
            w.close()

        clients = [asyncio.create_task(client()) for _ in range(n)]
        deadline = time.time() + 60
        while arrived < n and time.time() < deadline:
            await asyncio.sleep(0.05)
        held = rss_kib(proxy.pid)
        release.set()
        await asyncio.gather(*clients, return_exceptions=True)
        per = (held - before) * 1024 / max(arrived, 1)
        print(f"in_flight={arrived} rss_before_KiB={before} rss_held_KiB={held} bytes_per_request={per:.0f}")
    finally:
        proxy.terminate()
        proxy.wait()
        server.close()


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sep = sys.argv.index("--")
    count, px, up = (int(a) for a in sys.argv[1:sep])
    asyncio.run(main(count, px, up, sys.argv[sep + 1 :]))
