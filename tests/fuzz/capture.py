#!/usr/bin/env python3
"""Accepts TCP connections and saves each one's bytes: a stand-in migration
destination for recording what a source sends (main stream and multifd
channels). Usage: capture.py PORT_FILE OUT_PREFIX [IDLE_SECONDS]

Writes the bound port into PORT_FILE, then saves connection k (in accept
order) as OUT_PREFIX.k.bin. Sends nothing back. Exits once every connection
has closed and none has come for IDLE_SECONDS (default 3)."""
import selectors
import socket
import sys
import time

port_file, prefix = sys.argv[1], sys.argv[2]
idle = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
srv.setblocking(False)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)

sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ, None)
data = []
open_conns = 0
last = time.monotonic()
while True:
    events = sel.select(timeout=0.2)
    for key, _ in events:
        if key.data is None:
            conn, _ = srv.accept()
            conn.setblocking(False)
            data.append(bytearray())
            sel.register(conn, selectors.EVENT_READ, len(data) - 1)
            open_conns += 1
        else:
            chunk = key.fileobj.recv(1 << 20)
            if chunk:
                data[key.data] += chunk
            else:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                open_conns -= 1
        last = time.monotonic()
    if data and open_conns == 0 and time.monotonic() - last > idle:
        break
    if not data and time.monotonic() - last > 60:
        sys.exit("capture.py: no connection in 60 s")
for k, d in enumerate(data):
    with open("%s.%d.bin" % (prefix, k), "wb") as f:
        f.write(d)
