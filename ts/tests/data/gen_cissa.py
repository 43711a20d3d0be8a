#!/usr/bin/env python3
"""Writes cissa.json: DVB-CISSA known-answer vectors.

The scrambled packets come from OpenSSL's AES-128-CBC (through the Python
`cryptography` package), not from our Rust code, so the vectors check our
scrambler against an independent implementation. The packets are built
here by hand too. Run from this folder: python3 gen_cissa.py > cissa.json
"""
import json
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

IV = b"DVBTMCPTAESCISSA"


def packet(pid, pusi, cc, af, payload):
    """A clear TS packet; `af` is the adaptation field after its length byte
    (None for no field); with a payload the field is stuffed to fill."""
    hdr = bytes([0x47, (0x40 if pusi else 0) | (pid >> 8), pid & 0xFF])
    if af is None:
        assert len(payload) == 184
        return hdr + bytes([0x10 | cc]) + payload
    body = 184 - 1 - len(payload)
    assert body >= len(af)
    field = af + b"\xff" * (body - len(af))
    afc = 0x30 if payload else 0x20
    return hdr + bytes([afc | cc, len(field)]) + field + payload


def scramble(pkt, cw, parity):
    afc = (pkt[3] >> 4) & 3
    if afc & 1 == 0:
        return pkt  # no payload: left clear, not marked
    start = 4 + (1 + pkt[4] if afc & 2 else 0)
    payload = pkt[start:]
    n = len(payload) - len(payload) % 16
    enc = Cipher(algorithms.AES(cw), modes.CBC(IV)).encryptor()
    out = enc.update(payload[:n]) + enc.finalize() + payload[n:]
    sc = 0x80 if parity == "even" else 0xC0
    return pkt[:3] + bytes([pkt[3] | sc]) + pkt[4:start] + out


def ramp(n, seed):
    return bytes((seed + 7 * i) & 0xFF for i in range(n))


PCR = bytes([0x10, 0x01, 0x23, 0x45, 0x67, 0x7E | 0x01, 0x2C])  # flags + PCR
cases = [
    ("full 184-byte payload: 11 blocks and an 8-byte residue", "even",
     bytes(range(16)), packet(0x100, True, 0, None, ramp(184, 1))),
    ("adaptation field with a PCR, 176-byte payload: 11 whole blocks", "odd",
     bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
     packet(0x101, False, 5, PCR, ramp(176, 2))),
    ("stuffed adaptation field, 100-byte payload: 6 blocks and a 4-byte residue", "even",
     bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"),
     packet(0x1FFE, False, 15, b"\x00", ramp(100, 3))),
    ("10-byte payload: no whole block, all clear but marked scrambled", "odd",
     bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
     packet(0x200, True, 9, b"\x40", ramp(10, 4))),
    ("adaptation field only: no payload, left clear and unmarked", "even",
     bytes.fromhex("ffeeddccbbaa99887766554433221100"),
     packet(0x100, False, 3, PCR, b"")),
]

vectors = []
for name, parity, cw, pkt in cases:
    assert len(pkt) == 188
    vectors.append({
        "name": name,
        "parity": parity,
        "cw": cw.hex(),
        "clear": pkt.hex(),
        "scrambled": scramble(pkt, cw, parity).hex(),
    })

print(json.dumps({
    "algorithm": "DVB-CISSA (ETSI TS 103 127): AES-128-CBC, IV 'DVBTMCPTAESCISSA' per packet",
    "generator": "gen_cissa.py with OpenSSL AES-128-CBC",
    "vectors": vectors,
}, indent=2))
