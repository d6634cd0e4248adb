#!/usr/bin/env python3
"""gguf_zero_tensor.py — zeroes one tensor's data in a GGUF file, in place.

Usage: gguf_zero_tensor.py FILE TENSOR_NAME

A helper for tests that need a model with a known property: a model whose
output.weight is all zeros gives all-zero logits, so greedy decoding always
picks token 0 and so does the MTP head (it uses the same matrix) — every
speculative draft is then right. Reads the GGUF v3 header (model-spec §2.1)
just far enough to find the tensor's bytes."""
import struct
import sys

SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
STRING, ARRAY = 8, 9
# ggml type -> (block elements, block bytes) for the types ds4 files use
BLOCKS = {0: (1, 4), 1: (1, 2), 8: (32, 34), 10: (256, 84), 12: (256, 144), 16: (256, 66), 26: (1, 4), 30: (1, 2)}


def main():
    path, name = sys.argv[1], sys.argv[2]
    with open(path, "r+b") as f:
        data = f.read()
        pos = 0

        def take(fmt):
            nonlocal pos
            v = struct.unpack_from("<" + fmt, data, pos)
            pos += struct.calcsize("<" + fmt)
            return v[0]

        def string():
            nonlocal pos
            n = take("Q")
            s = data[pos:pos + n].decode("utf-8")
            pos += n
            return s

        def skip_value(t):
            nonlocal pos
            if t == STRING:
                string()
            elif t == ARRAY:
                et, n = take("I"), take("Q")
                for _ in range(n):
                    skip_value(et)
            else:
                pos += SCALAR[t]

        if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] != 3:
            sys.exit(f"{path}: not a GGUF v3 file")
        pos = 8
        n_tensors, n_kv = take("Q"), take("Q")
        alignment = 32
        for _ in range(n_kv):
            key, t = string(), take("I")
            if key == "general.alignment" and t == 4:
                alignment = take("I")
            else:
                skip_value(t)
        found = None
        for _ in range(n_tensors):
            tname, n_dims = string(), take("I")
            dims = [take("Q") for _ in range(n_dims)]
            ttype, offset = take("I"), take("Q")
            if tname == name:
                found = (dims, ttype, offset)
        if not found:
            sys.exit(f"{path}: no tensor {name}")
        dims, ttype, offset = found
        start = (pos + alignment - 1) // alignment * alignment + offset
        elems = 1
        for d in dims:
            elems *= d
        be, bb = BLOCKS[ttype]
        f.seek(start)
        f.write(bytes(elems // be * bb))


main()
