#!/usr/bin/env python3
"""Write the tensor-type fixtures read by tests/test_quants.c.

The expected values come from the `gguf` package's numpy implementation of
ggml's types (gguf.quants), an implementation independent of codi's C code:

    pip install gguf numpy
    python3 tools/gen_quant_fixtures.py [--ggml-lib .../libggml-base.so]
                                        # -> tests/fixtures/quants/

One file per type, <type name in lower case>.bin, little-endian:

    char[4]  magic "CQFX"
    u32      version (1)
    u32      type id (ggml numbering)
    u32      block size (elements per block)
    u32      type size (bytes per block)
    u32      n_deq: blocks in the dequantize section
    u32      n_q:   blocks in the quantize section (0: no reference quantizer)
    dequantize section: n_deq blocks of raw bytes, then n_deq*bs f32 values
    quantize section:   n_q*bs f32 inputs, then n_q blocks of expected bytes

Dequantize blocks are random bytes with sane half-float scales, so every bit
pattern of the packed quants and scales is exercised. The quantize section is
written where gguf.quants has a quantizer that follows ggml's reference (the
legacy types, F16, BF16); codi must reproduce those bytes exactly.
gguf.quants has no Q8_1 or Q8_K; their dequantization (a plain d * q) is
computed here.

gguf.quants has no k-quant quantizer. With --ggml-lib PATH/libggml-base.so
(any llama.cpp build; llama-cpp-python ships one) the quantize sections of
Q2_K..Q6_K, Q8_K and Q8_1 are filled from ggml's own quantize_row_*_ref
through ctypes; without it they are left empty and the test skips them.
The committed fixtures were written with the libggml-base 0.25.3 that
llama-cpp-python 0.3.36 builds.
"""

import argparse
import ctypes
import os
import struct
import sys

import numpy as np

try:
    from gguf import GGMLQuantizationType as T
    from gguf import quants as gq
    from gguf.constants import GGML_QUANT_SIZES
except ImportError:
    sys.exit("needs the gguf package: pip install gguf numpy")

MAGIC = b"CQFX"
VERSION = 1
SEED = 20240611

# Byte offsets of the half-float scales inside each block type; random
# bytes there would often be inf/nan, so they are overwritten.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
    T.Q8_0: [0], T.Q8_1: [0, 2],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2],
    T.Q6_K: [208],
}

TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
         T.Q8_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]

QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}

# gguf-py still lists Q8_1 with ggml's old float d/s layout (40 bytes);
# ggml's block_q8_1 has been two halves + 32 quants (36 bytes) since.
SIZES = dict(GGML_QUANT_SIZES)
SIZES[T.Q8_1] = (32, 36)


def random_half(rng, i):
    """A finite half with a spread of exponents; block 1 gets a subnormal."""
    if i == 1:
        return np.float16(rng.integers(1, 1024) * 2.0 ** -24 *
                          rng.choice([-1.0, 1.0]))
    mag = rng.uniform(0.5, 1.0) * 2.0 ** int(rng.integers(-12, 3))
    return np.float16(mag * rng.choice([-1.0, 1.0]))


def float_specials(dtype):
    """Edge values for the float types: zeros, subnormals, ties, inf, nan."""
    v = [0.0, -0.0, 1.0, -2.0, 65504.0, 65519.0, 65520.0, 1e10, -1e-10,
         2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1.5 * 2.0 ** -24,
         2.5 * 2.0 ** -24, 1023.5 * 2.0 ** -24, 1 + 2.0 ** -11,
         1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8,
         float("inf"), float("-inf"), 3.0e38, 1e-40, -1e-45]
    return np.array(v, dtype=np.float32)


def dequant_blocks(qtype, rng, n_blocks):
    bs, ts = SIZES[qtype]
    if qtype == T.F32:
        vals = rng.standard_normal(n_blocks).astype(np.float32)
        return vals.view(np.uint8).copy(), vals.copy()
    if qtype == T.F16:
        raw = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        raw[raw & 0x7C00 == 0x7C00] &= 0xBFFF  # no inf/nan: compared by value
        raw[:4] = [0x0001, 0x03FF, 0x8400, 0x7BFF]
        vals = raw.view(np.float16).astype(np.float32)
        return raw.view(np.uint8).copy(), vals
    if qtype == T.BF16:
        raw = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        raw[raw & 0x7F80 == 0x7F80] &= 0xBFFF
        raw[:3] = [0x0001, 0x807F, 0x7F7F]
        data = raw.view(np.uint8).copy()
        return data, gq.dequantize(data, qtype).reshape(-1)

    data = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for i in range(n_blocks):
        if qtype == T.Q8_K:
            d = np.float32(rng.uniform(-1, 1) * 2.0 ** -7)
            data[i, 0:4] = np.frombuffer(d.tobytes(), dtype=np.uint8)
            continue
        for off in HALF_FIELDS[qtype]:
            h = random_half(rng, i)
            data[i, off:off + 2] = np.frombuffer(h.tobytes(), dtype=np.uint8)
    if qtype == T.Q8_1:  # d * qs; s is ignored
        d = data[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = data[:, 4:].copy().view(np.int8).astype(np.float32)
        vals = q * d
    elif qtype == T.Q8_K:
        d = data[:, 0:4].copy().view(np.float32)
        q = data[:, 4:4 + 256].copy().view(np.int8).astype(np.float32)
        vals = d * q
    else:
        vals = gq.dequantize(data, qtype)
    return data.reshape(-1), np.asarray(vals, dtype=np.float32).reshape(-1)


def quant_inputs(qtype, rng, n_blocks):
    bs, _ = SIZES[qtype]
    if bs == 1:
        spec = float_specials(np.float32)
        rest = (rng.standard_normal(n_blocks - len(spec)) *
                2.0 ** rng.integers(-20, 10, n_blocks - len(spec)))
        return np.concatenate([spec, rest.astype(np.float32)])
    x = rng.standard_normal((n_blocks, bs)).astype(np.float32)
    x *= np.exp2(rng.integers(-6, 4, (n_blocks, 1))).astype(np.float32)
    if bs == 256:
        x[1, 16:48] = 0.0           # zero sub-blocks inside a super-block
        x[2, 200] *= 40.0           # an outlier
        x[3] = np.abs(x[3]) + 0.5   # all positive: min > 0
        x[0] = 0.0                  # all zero: d = 0 path
        return x.reshape(-1)
    x[0] = 0.0                      # all zero: d = 0 path
    x[1] = 0.0
    x[1, 5] = -3.0                  # a single non-zero
    x[2, 3] = 7.5                   # equal magnitudes, opposite signs:
    x[2, 9] = -7.5                  # the first one decides the sign
    x[3] = np.abs(x[3])             # all positive (min > 0 for _1 types)
    return x.reshape(-1)


def ggml_quantizer(lib, qtype):
    """ggml's quantize_row_<type>_ref from a loaded libggml-base, or None."""
    if lib is None:
        return None
    name = "quantize_row_" + qtype.name[0].lower() + qtype.name[1:] + "_ref"
    fn = getattr(lib, name, None)
    if fn is None:
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def run(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        bs, ts = SIZES[qtype]
        out = np.zeros(x.size // bs * ts, dtype=np.uint8)
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out
    return run


def quantize(qtype, x, lib=None):
    if qtype not in QUANTIZABLE:
        return ggml_quantizer(lib, qtype)(x)
    if qtype == T.F32:
        return x.view(np.uint8).copy()
    if qtype == T.F16:
        with np.errstate(over="ignore"):  # 65520 and up become inf
            return x.astype(np.float16).view(np.uint8).copy()
    return gq.quantize(x.reshape(1, -1), qtype).reshape(-1)


def write_fixture(path, qtype, rng, n_deq, n_q, lib):
    bs, ts = SIZES[qtype]
    raw, deq = dequant_blocks(qtype, rng, n_deq)
    assert raw.size == n_deq * ts and deq.size == n_deq * bs
    if qtype not in QUANTIZABLE and ggml_quantizer(lib, qtype) is None:
        n_q = 0
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<6I", VERSION, int(qtype), bs, ts, n_deq, n_q))
        f.write(raw.astype(np.uint8).tobytes())
        f.write(deq.astype("<f4").tobytes())
        if n_q:
            x = quant_inputs(qtype, rng, n_q)
            q = quantize(qtype, x, lib)
            assert x.size == n_q * bs and q.size == n_q * ts
            f.write(x.astype("<f4").tobytes())
            f.write(q.astype(np.uint8).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures",
                                                  "quants"))
    ap.add_argument("--ggml-lib", help="libggml-base.so for the k-quant "
                    "(and Q8_1) quantize sections")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.ggml_lib) if args.ggml_lib else None
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for qtype in TYPES:
        bs, _ = SIZES[qtype]
        if bs == 1:
            n_deq, n_q = 64, 64
        elif bs == 32:
            n_deq, n_q = 6, 8
        else:
            n_deq, n_q = 3, 4
        path = os.path.join(args.out, qtype.name.lower() + ".bin")
        write_fixture(path, qtype, rng, n_deq, n_q, lib)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
