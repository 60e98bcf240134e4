#!/usr/bin/env python3
"""Records the bytes torch's own TCPStore client and server exchange for the queries rotor's
rendezvous uses, through a logging proxy on loopback, into a JSON transcript that rotor's tests
replay (launch/src/store.rs: rotor's client must send exactly the client's bytes and understand
the server's; rotor's server must answer the client's bytes exactly as torch's server did).

    python3 -m pip install torch            # the agent's version: the codes are its enum order
    python3 scripts/record-tcpstore.py launch/tests/data/tcpstore-torch.json

Re-run it when the torch that torchrun runs changes (REFERENCE.md 7.5, "Version caveat").
"""

import json
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

PREFIX = "rid/rotor/0/"  # torch's client adds the leading "/": raw keys are /rid/rotor/0/...


def proxy(upstream_port, events, ready):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ready.append(lsock.getsockname()[1])
    client, _ = lsock.accept()
    server = socket.create_connection(("127.0.0.1", upstream_port))
    lock = threading.Lock()

    def pump(src, dst, direction):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with lock:
                if events and events[-1]["dir"] == direction:
                    events[-1]["bytes"] += data
                else:
                    events.append({"dir": direction, "bytes": data})
            dst.sendall(data)

    threads = [
        threading.Thread(target=pump, args=(client, server, "c2s"), daemon=True),
        threading.Thread(target=pump, args=(server, client, "s2c"), daemon=True),
    ]
    for t in threads:
        t.start()
    return threads


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tcpstore-torch.json"
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    events, ready = [], []
    threading.Thread(target=proxy, args=(server.port, events, ready), daemon=True).start()
    while not ready:
        time.sleep(0.01)
    client = dist.TCPStore(
        "127.0.0.1", ready[0], is_master=False, wait_for_workers=False,
        timeout=timedelta(seconds=30),
    )
    ops = []
    # What rotor's rendezvous does, in order (launch/src/rendezvous.rs).
    client.set(PREFIX + "secret", b"ab" * 32)
    ops.append(["set", "secret", (b"ab" * 32).decode()])
    client.set(PREFIX + "addr/0", b"127.0.0.1:40001")
    ops.append(["set", "addr/0", "127.0.0.1:40001"])
    server.set(PREFIX + "addr/1", b"127.0.0.1:40002")  # the other rank, on its own connection
    client.wait([PREFIX + "addr/0", PREFIX + "addr/1"])
    ops.append(["wait", ["addr/0", "addr/1"]])
    v = client.get(PREFIX + "addr/1")
    ops.append(["get", "addr/1", v.decode()])
    ops.append(["check", ["addr/1"], client.check([PREFIX + "addr/1"])])
    ops.append(["check", ["addr/9"], client.check([PREFIX + "addr/9"])])
    ops.append(["add", "count", 5, client.add(PREFIX + "count", 5)])
    ops.append(["add", "count", -2, client.add(PREFIX + "count", -2)])
    try:
        client.wait([PREFIX + "addr/9"], timedelta(seconds=1))
        raise SystemExit("a wait for a missing key returned")
    except dist.DistStoreError:
        ops.append(["wait_times_out", ["addr/9"]])
    v = client.get(PREFIX + "secret")
    ops.append(["get", "secret", v.decode()])
    time.sleep(0.3)
    del client
    time.sleep(0.3)
    transcript = {
        "torch": torch.__version__,
        "backend": "libuv" if server.libuvBackend else "classic",
        "recorded_by": "scripts/record-tcpstore.py",
        "key_prefix": "/" + PREFIX,
        "client_pid": os.getpid(),
        "ops": ops,
        "events": [{"dir": e["dir"], "hex": e["bytes"].hex()} for e in events],
    }
    with open(out, "w") as f:
        json.dump(transcript, f, indent=1)
        f.write("\n")
    print(f"{out}: {len(events)} exchanges, torch {torch.__version__}, {transcript['backend']}")


if __name__ == "__main__":
    main()
