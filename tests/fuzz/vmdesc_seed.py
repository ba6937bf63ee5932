#!/usr/bin/env python3
"""Cuts a seed for the vmdesc fuzz target out of a migration stream: be32 n,
then n bytes of what lies between the configuration's machine name and EOF
(configuration subsections, command and device sections; the "ram"
sections are left out, their pages only weigh on the fuzzer), then the VM
description's JSON. Usage: vmdesc_seed.py STREAM OUT. Writes nothing for a
stream without a VM description at its end."""
import struct
import sys


def be(d, at, n):
    return int.from_bytes(d[at:at + n], "big")


def skip_ram(d, at):
    """Offset after the RAM records starting at `at` (through EOS), or None."""
    while at + 8 <= len(d):
        rec = be(d, at, 8)
        at += 8
        flags = rec & 0xFFF
        kind = flags & ~0x20
        if kind == 0x10:  # EOS
            return at
        if kind == 0x04:  # MEM_SIZE: block list up to the total
            total, got = rec & ~0xFFF, 0
            while got < total and at < len(d):
                n = d[at]
                got += be(d, at + 1 + n, 8)
                at += 1 + n + 8
            continue
        if kind == 0x200:  # MULTIFD_FLUSH
            continue
        if kind not in (0x02, 0x08):
            return None
        if not flags & 0x20:
            at += 1 + d[at]
        at += 1 if kind == 0x02 else 4096
    return None


def strip_ram(body):
    """body without its "ram" sections, as far as they can be walked."""
    out = bytearray()
    at, ram_ids = 0, set()
    while at < len(body):
        t = body[at]
        if t in (1, 4):
            sid = be(body, at + 1, 4)
            n = body[at + 5]
            idstr = body[at + 6:at + 6 + n]
            hdr_end = at + 6 + n + 8
            if idstr != b"ram":
                break
            ram_ids.add(sid)
        elif t in (2, 3) and be(body, at + 1, 4) in ram_ids:
            hdr_end = at + 5
        elif t == 8:
            end = at + 5 + be(body, at + 3, 2)
            out += body[at:end]
            at = end
            continue
        else:
            break
        end = skip_ram(body, hdr_end)
        if end is None or body[end:end + 1] != b"\x7e":
            return body
        at = end + 5  # footer
    return bytes(out) + body[at:]


d = open(sys.argv[1], "rb").read()
if d[:4] != b"QEVM" or d[8:9] != b"\x07":
    sys.exit(0)
body_start = 13 + be(d, 9, 4)
for p in range(len(d) - 6, body_start, -1):
    if d[p] == 6 and d[p + 5:p + 6] == b"{" and be(d, p + 1, 4) == len(d) - p - 5:
        if d[p - 1] != 0:
            break
        body = strip_ram(d[body_start:p - 1])
        with open(sys.argv[2], "wb") as f:
            f.write(struct.pack(">I", len(body)) + body + d[p + 5:])
        break
