#!/usr/bin/env python3
"""Reads the Service Description Table of an MPEG transport stream file and
prints, as JSON, what it says of each service of the actual transport
stream: {"<service_id>": {"free_ca_mode": bool, "name": str, "sections": n}}.

Written from ETSI EN 300 468 (section 5.2.3, the SDT; 6.2.33, the
service_descriptor) and ISO/IEC 13818-1 (the transport packet, section
assembly, CRC_32), on the standard library alone, so that it shares
nothing with the Rust `ts` crate whose output it checks. Every section is
checked: its CRC_32, and that every version of a service's entry says the
same; a malformed one makes the script exit 1 with the reason on stderr.

Usage: python3 sdt_services.py FILE.ts
"""

import json
import sys

PACKET = 188
SDT_PID = 0x11
SDT_ACTUAL = 0x42


def crc32_mpeg(data):
    """CRC-32/MPEG-2: polynomial 0x04C11DB7, initial 0xFFFFFFFF, no
    reflection, no final XOR; a section with its CRC_32 gives 0."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
    return crc


def sections(ts, pid):
    """The complete sections carried on `pid`, in order (13818-1 2.4.4:
    payload_unit_start_indicator and the pointer_field)."""
    buf = None  # the section being assembled, None until a start is seen
    for off in range(0, len(ts) - PACKET + 1, PACKET):
        p = ts[off:off + PACKET]
        if p[0] != 0x47:
            raise ValueError(f"no sync byte at offset {off}")
        if ((p[1] & 0x1F) << 8 | p[2]) != pid:
            continue
        afc = (p[3] >> 4) & 0x3
        if afc in (0, 2):
            continue
        payload = p[4 + (1 + p[4] if afc == 3 else 0):]
        if p[1] & 0x40:
            pointer = payload[0]
            if buf is not None:
                # The bytes before the pointer end the previous section.
                buf += payload[1:1 + pointer]
                yield from take(buf)
            buf = bytearray(payload[1 + pointer:])
        elif buf is None:
            continue
        else:
            buf += payload
        yield from take(buf)


def take(buf):
    """Takes the whole sections off the front of `buf`; what follows a
    table_id of 0xFF is stuffing and is dropped."""
    while len(buf) >= 3 and buf[0] != 0xFF:
        length = 3 + ((buf[1] & 0x0F) << 8 | buf[2])
        if len(buf) < length:
            return
        yield bytes(buf[:length])
        del buf[:length]
    if buf[:1] == b"\xff":
        del buf[:]


def services(section):
    """The service loop of one SDT section (EN 300 468, 5.2.3)."""
    if crc32_mpeg(section) != 0:
        raise ValueError("an SDT section fails its CRC_32")
    length = (section[1] & 0x0F) << 8 | section[2]
    end = 3 + length - 4
    i = 11  # after original_network_id and reserved_future_use
    while i < end:
        if i + 5 > end:
            raise ValueError("a service loop entry runs past the section")
        service_id = section[i] << 8 | section[i + 1]
        running_status = section[i + 3] >> 5
        free_ca_mode = bool(section[i + 3] & 0x10)
        loop_length = (section[i + 3] & 0x0F) << 8 | section[i + 4]
        j, stop = i + 5, i + 5 + loop_length
        if stop > end:
            raise ValueError(f"service {service_id}: descriptors run past the section")
        name = None
        while j < stop:
            tag, dlen = section[j], section[j + 1]
            body = section[j + 2:j + 2 + dlen]
            if tag == 0x48:  # service_descriptor (6.2.33)
                plen = body[1]
                nlen = body[2 + plen]
                name = body[3 + plen:3 + plen + nlen].decode("latin-1")
            j += 2 + dlen
        yield service_id, {
            "free_ca_mode": free_ca_mode,
            "running_status": running_status,
            "name": name,
        }
        i = stop


def main():
    with open(sys.argv[1], "rb") as f:
        ts = f.read()
    seen = {}
    try:
        for s in sections(ts, SDT_PID):
            if s[0] != SDT_ACTUAL:
                continue
            for sid, entry in services(s):
                key = str(sid)
                if key in seen:
                    before = dict(seen[key])
                    before.pop("sections")
                    if before != entry:
                        raise ValueError(f"service {sid} changes: {before} then {entry}")
                    seen[key]["sections"] += 1
                else:
                    seen[key] = dict(entry, sections=1)
    except (ValueError, IndexError) as e:
        print(f"sdt_services.py: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(seen, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
