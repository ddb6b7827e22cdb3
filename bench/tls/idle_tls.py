#!/usr/bin/env python3
"""Memory a proxy holds per idle TLS connection.

Opens N TLS connections to the proxy (handshake complete, no request), reads the proxy
process tree's VmRSS before and after, and prints the growth per connection in bytes.
Certificates are not verified: the proxy serves a throwaway certificate.

usage: idle_tls.py N PORT PID
"""

import socket
import ssl
import subprocess
import sys
import time


def rss_kib(pid):
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    pids += [int(p) for p in out.stdout.split()]
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    n, port, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    # Warm up: the proxy's first connections allocate what every later one shares.
    warm = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(50)]
    time.sleep(0.5)
    before = rss_kib(pid)
    held = []
    for _ in range(n):
        held.append(ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))))
    time.sleep(1.0)
    after = rss_kib(pid)
    print(max(0, (after - before) * 1024 // n))
    for s in held + warm:
        s.close()


if __name__ == "__main__":
    main()
