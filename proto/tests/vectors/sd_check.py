#!/usr/bin/env python3
"""Recomputes tests/vectors/sd.json with Python's `cryptography`, from the
definitions in docs/PROTOCOL.md (section 2.3 and 4.5) alone: the label PRG,
node labels, a card's entries, subset ids and keys, wrap keys, the key
check value, and the whole SD EMM-G (Ed25519 signature and every byte).

Usage: python3 sd_check.py sd.json   -> prints "sd vectors ok" or fails.
"""
import json
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand


def expand(prk, info):
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def hkdf(salt, ikm, info):
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def G(x, which):
    return expand(x, b"\x01iodoform/v1/sd-" + which)


def be(n, width):
    return n.to_bytes(width, "big")


def depth_of(v):
    return v.bit_length() - 1


def label(master, d, tree, node):
    return hkdf(b"iodoform/v1/sd-label", master, b"\x01" + be(d, 1) + be(tree, 4) + be(node, 4))


def whole(master, d, tree):
    return hkdf(b"iodoform/v1/sd-whole", master, b"\x01" + be(d, 1) + be(tree, 4))


def walk(x, k, j):
    """LABEL(i, j) from LABEL(i, k), k above j: L for a 0 bit, R for a 1."""
    for s in reversed(range(depth_of(j) - depth_of(k))):
        x = G(x, b"R" if (j >> s) & 1 else b"L")
    return x


def subset_key(master, d, tree, i, j):
    if i == 0:
        return whole(master, d, tree)
    return G(walk(label(master, d, tree, i), i, j), b"M")


def subset_id(tree, i, j):
    if i == 0:
        return be(tree, 3) + b"\xff" + be(1, 4)
    return be(tree, 3) + be(depth_of(i), 1) + be(j, 4)


def card_entries(master, d, tree, leaf):
    u = (1 << d) | leaf
    out = []
    for a in range(d):
        i = u >> (d - a)
        for b in range(a + 1, d + 1):
            k = (u >> (d - b)) ^ 1
            out.append(walk(label(master, d, tree, i), i, k))
    out.append(whole(master, d, tree))
    return out


def in_subset(d, tree, i, j, ctree, leaf):
    if ctree != tree:
        return False
    if i == 0:
        return True
    u = (1 << d) | leaf
    under = lambda v: (u >> (d - depth_of(v))) == v
    return under(i) and not under(j)


def main(path):
    v = json.load(open(path))
    h = bytes.fromhex
    for p in v["prg"]:
        x = h(p["x"])
        assert G(x, b"L").hex() == p["left"], "G_L"
        assert G(x, b"M").hex() == p["middle"], "G_M"
        assert G(x, b"R").hex() == p["right"], "G_R"
    f = v["forest"]
    master, d, tree = h(f["master"]), f["depth"], f["tree"]
    for n in f["nodes"]:
        assert label(master, d, tree, n["node"]).hex() == n["label"], "LABEL(%d)" % n["node"]
    assert whole(master, d, tree).hex() == f["whole_key"], "whole-tree key"
    leaf = v["card"]["leaf"]
    assert [e.hex() for e in card_entries(master, d, tree, leaf)] == v["card"]["entries"], "card entries"
    for s in v["subsets"]:
        assert subset_id(s["tree"], s["i"], s["j"]).hex() == s["id"], "subset id"
        assert subset_key(master, d, s["tree"], s["i"], s["j"]).hex() == s["key"], "subset key"
        assert in_subset(d, s["tree"], s["i"], s["j"], tree, leaf) == s["card_derives"], "membership"
    dl = v["delivery"]
    kp, product, gen, issue = h(dl["product_key"]), dl["product"], dl["generation"], dl["issue"]
    info = be(issue, 8) + be(product, 4) + be(gen, 4)
    check = hkdf(b"iodoform/v1/sd-check", kp, b"\x01" + info)[:8]
    assert check.hex() == dl["check"], "key check value"
    wraps = b""
    for s, w in zip(v["subsets"], dl["wraps"]):
        sid = subset_id(s["tree"], s["i"], s["j"])
        kw = hkdf(b"iodoform/v1/sd-wrap", h(s["key"]), b"\x01" + info + sid)
        assert kw.hex() == w["wrap_key"], "wrap key"
        wrapped = bytes(a ^ b for a, b in zip(kp, kw))
        assert wrapped.hex() == w["wrapped"], "wrapped key"
        wraps += sid + wrapped
    e = v["emm_g"]
    sk = Ed25519PrivateKey.from_private_bytes(h(e["seed"]))
    payload = be(e["time"], 8) + bytes([6, 24]) + be(product, 4) + be(gen, 4) + be(issue, 8) + check
    for n in range(0, len(wraps), 240):
        chunk = wraps[n:n + 240]
        payload += bytes([7, len(chunk)]) + chunk
    header = bytes([2, 1]) + be(0xFFFFFFFF, 4) + be(e["seq"], 8) + be(len(payload) + 64, 2)
    emm = header + payload + sk.sign(header + payload)
    assert emm.hex() == e["bytes"], "SD EMM-G bytes"
    entries = v["card"]["entries"]
    cmds = []
    for n in range(0, len(entries), 7):
        chunk = b"".join(h(x) for x in entries[n:n + 7])
        value = be(d, 1) + be(tree, 4) + be(leaf, 4) + be(n, 2) + chunk
        cmds.append((bytes([8, len(value)]) + value).hex())
    assert cmds == v["sd_labels_commands"], "SD_LABELS commands"
    print("sd vectors ok")


if __name__ == "__main__":
    main(sys.argv[1])
