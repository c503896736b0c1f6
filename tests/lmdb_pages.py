"""Where the records of an LMDB file sit: a walk of the newest snapshot's trees by plain reads (the
headers as storage/integrity.py parses them), so a test can flip bits inside one database's keys
and values of a real file."""
import struct
from typing import NamedTuple

from miro_runtime.storage.integrity import _DB, _NODE, _PAGE_HDR, F_BIGDATA, P_BRANCH, P_INVALID, P_LEAF, read_header


class Node(NamedTuple):
    key: bytes
    key_at: int  # file offset of the key's first byte
    value_at: int  # file offset of the value (inline) or of its overflow page number
    value_size: int


def leaf_nodes(buf: bytes, page_size: int, root: int) -> list:
    """Every leaf node of the tree under page ``root``, in no particular order."""
    out, todo, seen = [], [root], set()
    while todo:
        pg = todo.pop()
        if pg in seen or pg == P_INVALID or (pg + 1) * page_size > len(buf):
            continue
        seen.add(pg)
        base = pg * page_size
        flags, lower = struct.unpack_from("<HH", buf, base + 10)
        for i in range((lower - _PAGE_HDR) // 2):
            off = base + struct.unpack_from("<H", buf, base + _PAGE_HDR + 2 * i)[0]
            lo, hi, nflags, ksize = _NODE.unpack_from(buf, off)
            if flags & P_BRANCH:
                todo.append(lo | (hi << 16) | (nflags << 32))
            elif flags & P_LEAF:
                size = 8 if nflags & F_BIGDATA else lo | (hi << 16)
                out.append(Node(bytes(buf[off + 8:off + 8 + ksize]), off + 8, off + 8 + ksize, size))
    return out


def databases(path: str) -> dict:
    """{name: (the named DB's node in the main DB, [its own leaf nodes])} of an LMDB data file."""
    buf = open(path, "rb").read()
    h = read_header(path)
    out = {}
    for node in leaf_nodes(buf, h["page_size"], h["roots"][1]):
        root = _DB.unpack_from(buf, node.value_at)[7]
        out[node.key.decode()] = (node, leaf_nodes(buf, h["page_size"], root))
    return out


def flip(path: str, offset: int, bit: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ (1 << bit)]))
