"""int8, Q8_0 and K-quant products as integer dot products (AVX2 or AVX-512 VNNI), as llama.cpp
runs them.

A GGUF block weight is a small integer (Q8_0: -128..127, Q4_K: 0..15, Q5_K: 0..31, Q6_K: 0..63)
times scales shared by 16 or 32 weights; so is this project's int8 (packed.py: -127..127, one
float32 scale per 32). If the activations are small integers too, a block's dot product is a
sum of byte products, which the CPU multiplies 32 or 64 at a time where the float kernels
(numba_jit.py) multiply 8 or 16 floats and must first unpack each weight into a float lane:

    AVX2         vpmaddubsw multiplies 32 unsigned weight bytes by 32 signed activation bytes
                 and adds neighbouring pairs (16-bit lanes); vpmaddwd adds those pairs again,
                 times a 16-bit scale, into 8 int32 lanes
    AVX-512 VNNI vpdpbusd does both for 64 bytes in one instruction (16 int32 lanes)

Which one runs is decided as the kernels compile, from the CPU numba compiles for (`isa()`);
the block functions below are the same for both. Measured on TinyLlama's matrices with VNNI,
float kernel -> this one in the same run: Q4_K 7.5 -> 24.6 GB/s, Q5_K 9.6 -> 27.2, Q6_K 3.9 ->
30.3, Q8_0 21.6 -> 45 (partly from the CPU's cache).

So each product first rounds its activation rows to int8, one float32 scale per 256 values
for K-quants (`quantize_rows`, llama.cpp's "Q8_K"), per 32 for Q8_0 and int8 (as llama.cpp
for Q8_0): x ~ xd * xq. That rounding is the price: outputs differ from the float kernels by
about 1% of their largest value (benchmarks/accuracy.py measures it on whole models). These
kernels are the "int8" kernel choice; "numba" keeps activations float32.

numba has no vector types and does integer arithmetic in 64 bits, so the block dot products
are written in LLVM IR (`numba.extending.intrinsic`): load 64 bytes, unpack with a mask and a
shift, multiply bytes (`_dot_bytes`), scale the int32 lanes, add the lanes up. Everything
around them (scales, mins, the parallel loop over rows) is numba as in numba_jit.py. Block
layouts and their byte offsets come from quants.py's table. Each block function also asks the
CPU for the weights 2 KiB further on (`_prefetch_ahead`) before it multiplies its own.
"""

from __future__ import annotations

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..quants import Q4_0, Q4_K, Q5_0, Q5_K, Q6_K, Q8_0
from .numba_jit import JIT, ROWS

I8, I16, I32, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
BYTES = ir.VectorType(I8, 64)  # one zmm register, or two ymm, as 64 bytes
HALF_BYTES = ir.VectorType(I8, 32)  # a ymm register: 32 bytes
LANES = ir.VectorType(I32, 16)  # ... or as 16 int32 lanes
ZERO = ir.Constant(LANES, [0] * 16)
QK = 256  # activations rounded per 256 values, one K-quant block
# How far ahead of its loads a block function prefetches weights (bytes): 1-8 KiB measured
# alike (stories110M Q8_0), far enough for memory's latency, near enough to stay in cache.
PREFETCH_AHEAD = 2048


def target_features() -> dict[str, bool] | None:
    """The CPU features numba compiles for: this CPU's, changed by $NUMBA_CPU_FEATURES'
    +feature/-feature entries; None when $NUMBA_CPU_NAME names another CPU (unknown)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return None
    features = dict(llvmlite.binding.get_host_cpu_features())
    for entry in (numba.config.CPU_FEATURES or "").split(","):
        if entry[:1] in ("+", "-"):
            features[entry[1:]] = entry[0] == "+"
    return features


def isa() -> str | None:
    """The instruction these kernels multiply bytes with: "vnni" (AVX-512 VNNI's vpdpbusd),
    "avx2" (vpmaddubsw + vpmaddwd), or None when the target CPU has neither."""
    features = target_features() or {}
    if features.get("avx512vnni") and features.get("avx512bw") and features.get("avx512vl"):
        return "vnni"
    return "avx2" if features.get("avx2") else None


def unavailable_reason() -> str | None:
    """Why these kernels cannot run here, or None when they can."""
    if target_features() is None:
        return "numba compiles for another CPU ($NUMBA_CPU_NAME)"
    if isa() is None:
        return "this CPU has neither AVX2 nor AVX-512 VNNI"
    return None


ISA = isa()  # read by the code generators below, as the kernels compile


@njit(cache=True)
def quantize_rows(x, group):
    """x (B, K) float32 -> xq (B, K) int8, xd (B, K/group) float32, xs (B, K/16) int32 with
    x ~ xd * xq per group of values (xd = max|x| / 127) and xs the sums of each 16 of xq (for
    the min and offset terms). A group holding NaN or Inf gets xd = NaN: its products are NaN."""
    B, K = x.shape
    xq = np.empty((B, K), dtype=np.int8)
    xd = np.empty((B, K // group), dtype=np.float32)
    xs = np.empty((B, K // 16), dtype=np.int32)
    for b in range(B):
        for i in range(K // group):
            values = x[b, i * group : (i + 1) * group]
            amax, finite = np.float32(0), True
            for j in range(group):
                amax = max(amax, abs(values[j]))
                finite &= np.isfinite(values[j])
            if not finite:
                xd[b, i] = np.nan
                xq[b, i * group : (i + 1) * group] = 0
            elif amax == 0:
                xd[b, i] = 0
                xq[b, i * group : (i + 1) * group] = 0
            else:
                inverse = np.float32(127) / amax
                for j in range(group):
                    xq[b, i * group + j] = np.int8(np.rint(values[j] * inverse))
                xd[b, i] = amax / np.float32(127)
        for g in range(K // 16):
            t = np.int32(0)
            for j in range(16):
                t += np.int32(xq[b, g * 16 + j])
            xs[b, g] = t
    return xq, xd, xs


# ---------------------------------------------------------------- LLVM IR pieces


def _load(context, builder, array_type, array, offset, vector):
    """A vector of the array's elements from `offset` on (no alignment assumed)."""
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())
    return builder.load(pointer, align=1)


def _prefetch_ahead(context, builder, array_type, array, offset, n_bytes: int):
    """Ask the CPU to start loading the n_bytes that lie PREFETCH_AHEAD bytes past `offset`
    (one prefetch per cache line): the weights a row's later blocks, or the next rows,
    will read. Decode streams every weight from memory once, and without it each block's
    loads waited for memory while the arithmetic of the ones before sat idle (stories110M
    Q8_0, all of one token's products: 9.6 -> 7.8 ms). Non-temporal (prefetchnta): each
    weight is read once per step, and lines fetched so evict less of what the Python and
    NumPy code between two products works on (decode, alternating processes: stories110M Q8_0
    90 -> 99 tok/s, stories15M Q8_0 310 -> 340; Q4_K_M and 4-row batches the same, 2-row
    batches 117 -> 122). `array` holds bytes (uint8 or int8).
    A prefetch past the array's end is harmless: it never faults. (numba_jit.py's float32
    dot product streams at the machine's bandwidth without it: there it cost 24 -> 21 GB/s.)"""
    data = context.make_array(array_type)(context, builder, array).data
    pointer_t = ir.IntType(8).as_pointer()
    prefetch = _llvm_function(
        builder, "llvm.prefetch.p0i8", ir.VoidType(), [pointer_t, I32, I32, I32]
    )
    for line in range(0, n_bytes, 64):
        at = builder.gep(data, [_at(builder, offset, PREFETCH_AHEAD + line)])
        # (address, read, locality 0: non-temporal, data)
        builder.call(prefetch, [builder.bitcast(at, pointer_t), I32(0), I32(0), I32(1)])


def _at(builder, base, plus: int):
    return builder.add(base, ir.Constant(base.type, plus))


def _half(context, builder, row_type, row, offset):
    """The fp16 at row[offset:offset + 2] as float (exact: subnormals, Inf and NaN kept)."""
    bits = _load(context, builder, row_type, row, offset, ir.IntType(16))
    return builder.fpext(builder.bitcast(bits, ir.HalfType()), F32)


def _llvm_function(builder, name: str, result, arguments):
    module = builder.module
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(result, arguments), name)


def _dot_bytes(builder, unsigned, signed, scales=None):
    """Byte products added in fours: lane l = Σ_{t<4} unsigned[4l + t] * signed[4l + t],
    times scales[l] if given.   <32n x i8> twice -> <8n x i32>

    VNNI: one vpdpbusd per 64 bytes (32 bytes: its 256-bit form), then the scales' multiply.
    AVX2, per 32 bytes: vpmaddubsw adds each two products into a 16-bit lane (saturating: the
    unsigned side must stay <= 128 against activations in -127..127), vpmaddwd adds each two of
    those times the lane's 16-bit scale (or 1) into an int32: the scale costs nothing extra."""
    n = unsigned.type.count
    if ISA == "vnni":
        lanes_t = ir.VectorType(I32, n // 4)
        name = f"llvm.x86.avx512.vpdpbusd.{32 * n // 4}"
        vpdpbusd = _llvm_function(builder, name, lanes_t, [lanes_t] * 3)
        zero = ir.Constant(lanes_t, [0] * (n // 4))
        args = [zero, builder.bitcast(unsigned, lanes_t), builder.bitcast(signed, lanes_t)]
        dots = builder.call(vpdpbusd, args)
        return dots if scales is None else builder.mul(dots, scales)
    I16x16, I32x8 = ir.VectorType(I16, 16), ir.VectorType(I32, 8)
    pmaddubsw = _llvm_function(builder, "llvm.x86.avx2.pmadd.ub.sw", I16x16, [HALF_BYTES] * 2)
    pmaddwd = _llvm_function(builder, "llvm.x86.avx2.pmadd.wd", I32x8, [I16x16] * 2)
    if scales is None:
        pair_scales = ir.Constant(ir.VectorType(I16, n // 2), [1] * (n // 2))
    else:  # each int32 lane's scale in both of its 16-bit halves
        narrow = builder.trunc(scales, ir.VectorType(I16, n // 4))
        pair_scales = _select(builder, narrow, narrow, [lane // 2 for lane in range(n // 2)])
    parts = []
    for h in range(n // 32):  # one ymm register at a time
        u32 = _select(builder, unsigned, unsigned, range(32 * h, 32 * h + 32))
        s32 = _select(builder, signed, signed, range(32 * h, 32 * h + 32))
        pairs = builder.call(pmaddubsw, [u32, s32])
        scale16 = _select(builder, pair_scales, pair_scales, range(16 * h, 16 * h + 16))
        parts.append(builder.call(pmaddwd, [pairs, scale16]))
    while len(parts) > 1:  # concatenate the int32 lanes
        pairs = zip(parts[::2], parts[1::2], strict=True)
        parts = [_select(builder, a, b, range(2 * a.type.count)) for a, b in pairs]
    return parts[0]


def _dot_signed(builder, weights, signed):
    """As _dot_bytes with signed weight bytes (Q8_0, int8: -128..127). AVX2 multiplies |w| by
    x with w's sign (vpsignb: the unsigned side stays <= 128); VNNI multiplies w + 128 (w xor
    0x80, unsigned) and subtracts 128 × Σ x of each 4 bytes after."""
    n = weights.type.count
    if ISA == "vnni":
        unsigned = builder.xor(weights, _splat(weights.type, 128))
        ones = _splat(weights.type, 1)
        sums = _dot_bytes(builder, ones, signed)  # Σ x of each 4 bytes
        dots = _dot_bytes(builder, unsigned, signed)
        return builder.sub(dots, builder.shl(sums, _splat(sums.type, 7)))
    flag = ir.IntType(1)  # llvm.abs's "-128 is poison": no, -128 stays -128 (128 unsigned)
    absolute = _llvm_function(builder, f"llvm.abs.v{n}i8", weights.type, [weights.type, flag])
    psignb = _llvm_function(builder, "llvm.x86.avx2.psign.b", HALF_BYTES, [HALF_BYTES] * 2)
    magnitudes = builder.call(absolute, [weights, ir.Constant(flag, 0)])
    parts = []
    for h in range(n // 32):
        w32 = _select(builder, weights, weights, range(32 * h, 32 * h + 32))
        x32 = _select(builder, signed, signed, range(32 * h, 32 * h + 32))
        parts.append(builder.call(psignb, [x32, w32]))
    signs = parts[0] if n == 32 else _select(builder, parts[0], parts[1], range(64))
    return _dot_bytes(builder, magnitudes, signs)


def _sum_lanes(builder, lanes):
    n = lanes.type.count
    add = _llvm_function(builder, f"llvm.vector.reduce.add.v{n}i32", I32, [lanes.type])
    return builder.call(add, [lanes])


def _select(builder, a, b, indices):
    """Lanes picked from the concatenation of vectors a and b (shufflevector)."""
    indices = list(indices)
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(indices)), indices))


def _splat(vector_type, value: int):
    return ir.Constant(vector_type, [value] * vector_type.count)


def _to_float(builder, integer):
    return builder.sitofp(integer, F32)


def _sums_of_32(context, builder, xs_type, xs, k):
    """<8 x i32>: Σ xq over each 32 values from k on, from xs's sums of each 16."""
    sums16 = _load(context, builder, xs_type, xs, builder.udiv(k, ir.Constant(k.type, 16)), LANES)
    return builder.add(
        _select(builder, sums16, sums16, range(0, 16, 2)),
        _select(builder, sums16, sums16, range(1, 16, 2)),
    )


# ---------------------------------------------------------------- Q4_K and Q5_K


def _q4k_scales_mins(context, builder, row_type, row, offset):
    """The 8 sub-blocks' 6-bit scales and mins from the 12 bytes at offset, as <8 x i32>:
    sub-block s < 4: scale = b[s] & 63, min = b[s+4] & 63; s >= 4: the low 4 bits from
    b[s+4] (scale: low nibble, min: high nibble), the top 2 from b[s-4] (scale), b[s] (min)."""
    V8 = ir.VectorType(I8, 8)
    b = _load(context, builder, row_type, row, offset, ir.VectorType(I8, 16))  # 12 used
    same = _select(builder, b, b, range(8))  # b[s]
    after = _select(builder, b, b, range(4, 12))  # b[s + 4]
    before = _select(builder, b, b, [0, 1, 2, 3] * 2)  # b[s - 4] for s >= 4
    top_two = _splat(V8, 6)
    upper = builder.shl(builder.lshr(before, top_two), _splat(V8, 4))
    scale_high = builder.or_(builder.and_(after, _splat(V8, 15)), upper)
    upper = builder.shl(builder.lshr(same, top_two), _splat(V8, 4))
    min_high = builder.or_(builder.lshr(after, _splat(V8, 4)), upper)
    first_four = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 4 + [0] * 4)
    scales = builder.select(first_four, builder.and_(same, _splat(V8, 63)), scale_high)
    mins = builder.select(first_four, builder.and_(after, _splat(V8, 63)), min_high)
    V8i32 = ir.VectorType(I32, 8)
    return builder.zext(scales, V8i32), builder.zext(mins, V8i32)


def _k4_codegen(fifth_bits: bool):
    """The codegen of a Q4_K block (fifth_bits False) or a Q5_K block (True: as Q4_K, plus 32
    bytes qh before the nibbles, bit s of byte j the fifth bit of weight j of sub-block s)."""
    layout = Q5_K if fifth_bits else Q4_K

    def codegen(context, builder, signature, args):
        row_v, o_v, xq_v, k_v, xs_v, xd_v = args
        row_t, _, xq_t, _, xs_t, _ = signature.args
        _prefetch_ahead(context, builder, row_t, row_v, o_v, layout.bytes)
        d = _half(context, builder, row_t, row_v, _at(builder, o_v, layout.d))
        dmin = _half(context, builder, row_t, row_v, _at(builder, o_v, layout.dmin))
        at = _at(builder, o_v, layout.scales)
        scales, mins = _q4k_scales_mins(context, builder, row_t, row_v, at)
        if fifth_bits:
            V32 = HALF_BYTES
            qh = _load(context, builder, row_t, row_v, _at(builder, o_v, Q5_K.qh), V32)
            # (qh >> s) & 1, moved to bit 4: sub-block s's fifth bits, one byte per weight
            fifth = [
                builder.shl(
                    builder.and_(builder.lshr(qh, _splat(V32, s)), _splat(V32, 1)), _splat(V32, 4)
                )
                for s in range(8)
            ]
        lanes = ZERO
        for c in range(2):  # bytes 64c..64c+63: chunks 2c and 2c+1 of 32 bytes
            at = _at(builder, o_v, layout.qs + 64 * c)
            packed = _load(context, builder, row_t, row_v, at, BYTES)
            low = builder.and_(packed, _splat(BYTES, 15))  # sub-blocks 4c (bytes 0-31), 4c+2
            high = builder.lshr(packed, _splat(BYTES, 4))  # sub-blocks 4c+1, 4c+3
            # in weight order: sub-blocks 4c, 4c+1 | 4c+2, 4c+3
            first = _select(builder, low, high, [*range(32), *range(64, 96)])
            second = _select(builder, low, high, [*range(32, 64), *range(96, 128)])
            for h, weights in enumerate((first, second)):
                s = 4 * c + 2 * h  # this vector's sub-blocks: s (lanes 0-7) and s + 1
                if fifth_bits:
                    weights = builder.or_(
                        weights, _select(builder, fifth[s], fifth[s + 1], range(64))
                    )
                x = _load(context, builder, xq_t, xq_v, _at(builder, k_v, 128 * c + 64 * h), BYTES)
                scale = _select(builder, scales, scales, [s] * 8 + [s + 1] * 8)
                lanes = builder.add(lanes, _dot_bytes(builder, weights, x, scale))
        sums32 = _sums_of_32(context, builder, xs_t, xs_v, k_v)  # Σ xq of each sub-block
        dots = _to_float(builder, _sum_lanes(builder, lanes))
        min_terms = _to_float(builder, _sum_lanes(builder, builder.mul(mins, sums32)))
        total = builder.fsub(builder.fmul(d, dots), builder.fmul(dmin, min_terms))
        return builder.fmul(xd_v, total)

    return codegen


@intrinsic
def _q4k_block(typingctx, row, o, xq, k, xs, xd):
    """float32 Σ_j w_j x_j over the Q4_K block at row[o : o + Q4_K.bytes] and activations
    x ~ xd * xq[k : k + 256] (xs: sums of each 16 of xq, from xs[k / 16]).

    w = d sc q - dmin m, so Σ w x = xd (d Σ_s sc_s Σ q xq - dmin Σ_s m_s Σ xq)."""
    return types.float32(row, o, xq, k, xs, xd), _k4_codegen(fifth_bits=False)


@intrinsic
def _q5k_block(typingctx, row, o, xq, k, xs, xd):
    """The same over the Q5_K block at row[o] (q in 0..31: a fifth bit from qh)."""
    return types.float32(row, o, xq, k, xs, xd), _k4_codegen(fifth_bits=True)


# The five row loops (matmul_q4_k, _q5_k, _q6_k, _q8_0, _int8) differ only in their block
# function and size, and stay five functions: numba caches on disk only functions defined at
# module level (one made by a factory around the block function recompiled in every process).


@njit(**JIT)
def matmul_q4_k(raw, x, out):
    """raw (N, K/256 * Q4_K.bytes) uint8 Q4_K blocks, x (B, K) float32 -> out (B, N)."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, QK)  # (B, K) int8, (B, K/256) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q4k_block(row, i * Q4_K.bytes, xq[b], i * QK, xs[b], xd[b, i])
                out[b, n] = total


@njit(**JIT)
def matmul_q5_k(raw, x, out):
    """raw (N, K/256 * Q5_K.bytes) uint8 Q5_K blocks, x (B, K) float32 -> out (B, N)."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, QK)  # (B, K) int8, (B, K/256) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q5k_block(row, i * Q5_K.bytes, xq[b], i * QK, xs[b], xd[b, i])
                out[b, n] = total


# ---------------------------------------------------------------- Q6_K


@intrinsic
def _q6k_block(typingctx, row, o, xq, k, xs, xd):
    """float32 Σ_j w_j x_j over the Q6_K block at row[o], as _q4k_block.

    w = d sc (q - 32) with q in 0..63, so Σ w x = xd d (Σ_g sc_g Σ q xq - 32 Σ_g sc_g Σ xq)
    over the 16 groups g of 16 weights. Each half h of the block (128 weights) holds: ql bytes
    64h + l (l < 64): low 4 bits of weight l (low nibble) and l + 64 (high nibble); qh byte
    32h + l (l < 32): the high 2 bits of weights l, l + 32, l + 64, l + 96 (bits 0-1, 2-3, 4-5,
    6-7); then 16 int8 scales and d (fp16)."""

    def codegen(context, builder, signature, args):
        row_v, o_v, xq_v, k_v, xs_v, xd_v = args
        row_t, _, xq_t, _, xs_t, _ = signature.args
        _prefetch_ahead(context, builder, row_t, row_v, o_v, Q6_K.bytes)
        V32 = HALF_BYTES
        raw_scales = _load(
            context, builder, row_t, row_v, _at(builder, o_v, Q6_K.scales), ir.VectorType(I8, 16)
        )
        scales = builder.sext(raw_scales, LANES)
        lanes = ZERO
        for h in range(2):
            low4 = _load(context, builder, row_t, row_v, _at(builder, o_v, Q6_K.ql + 64 * h), BYTES)
            at = _at(builder, o_v, Q6_K.qh + 32 * h)
            high2 = _load(context, builder, row_t, row_v, at, V32)
            shifted = [builder.lshr(high2, _splat(V32, 2 * p)) for p in range(4)]
            pairs = (  # (low 4 bits, high 2 bits) of weights 0-63, then 64-127
                (builder.and_(low4, _splat(BYTES, 15)), _select(builder, *shifted[:2], range(64))),
                (builder.lshr(low4, _splat(BYTES, 4)), _select(builder, *shifted[2:], range(64))),
            )
            for p, (nibbles, high) in enumerate(pairs):
                two_bits = builder.shl(builder.and_(high, _splat(BYTES, 3)), _splat(BYTES, 4))
                weights = builder.or_(nibbles, two_bits)
                x = _load(context, builder, xq_t, xq_v, _at(builder, k_v, 128 * h + 64 * p), BYTES)
                # lane l covers weights 4l..4l+3 of these 64: group 8h + 4p + l // 4
                scale = _select(
                    builder, scales, scales, [8 * h + 4 * p + l // 4 for l in range(16)]
                )
                lanes = builder.add(lanes, _dot_bytes(builder, weights, x, scale))
        g = builder.udiv(k_v, ir.Constant(k_v.type, 16))
        sums16 = _load(context, builder, xs_t, xs_v, g, LANES)
        offsets = builder.mul(_sum_lanes(builder, builder.mul(scales, sums16)), I32(32))
        dots = _to_float(builder, builder.sub(_sum_lanes(builder, lanes), offsets))
        d = _half(context, builder, row_t, row_v, _at(builder, o_v, Q6_K.d))
        return builder.fmul(xd_v, builder.fmul(d, dots))

    return types.float32(row, o, xq, k, xs, xd), codegen


@njit(**JIT)
def matmul_q6_k(raw, x, out):
    """raw (N, K/256 * Q6_K.bytes) uint8 Q6_K blocks, x (B, K) float32 -> out (B, N)."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, QK)  # (B, K) int8, (B, K/256) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q6k_block(row, i * Q6_K.bytes, xq[b], i * QK, xs[b], xd[b, i])
                out[b, n] = total


# ---------------------------------------------------------------- Q8_0


def _sum_floats(builder, lanes):
    """The sum of a float vector's lanes, halving it (any order: the lanes are partial sums)."""
    n = lanes.type.count
    while n > 1:
        n //= 2
        lanes = builder.fadd(
            _select(builder, lanes, lanes, range(n)),
            _select(builder, lanes, lanes, range(n, 2 * n)),
        )
    return builder.extract_element(lanes, I32(0))


def _groups(context, builder, weights, d, xq, k, xs, offset=None):
    """float32 Σ_j w_j x_j over 8 groups of 32 weights (256 values): `weights(p)` gives the 64
    bytes of groups 2p and 2p + 1, d (<8 x float>) each group's weight scale times its
    activations' scale, x ~ xq[k : k + 256] (xs: sums of each 16 of xq). The bytes are signed
    weights (Q8_0, int8: offset None), or unsigned ones less `offset` (Q4_0: q - 8, Q5_0: q - 16).

    Each group's byte products are added up as integers first (`_group_sums`: one lane per
    group), so the scales multiply once per group in one vector, and Σ (q - offset) xq =
    Σ q xq - offset Σ xq is exact, the last from xs. Signed bytes: AVX2 multiplies them as
    _dot_signed does; VNNI's vpdpbusd needs one unsigned side: q + 128 (q xor 0x80) is, so they
    are taken as unsigned ones less 128."""
    (xq_t, xq_v), (xs_t, xs_v) = xq, xs
    F8 = ir.VectorType(F32, 8)
    if offset is None and ISA == "vnni":
        offset, flip = 128, True
    else:
        flip = False
    dots = []  # <8 x i32> per group: its byte products added in fours
    for p in range(4):  # groups 2p and 2p + 1
        x = _load(context, builder, xq_t, xq_v, _at(builder, k, 64 * p), BYTES)
        w = weights(p)
        if offset is None:
            both = _dot_signed(builder, w, x)
        else:
            both = _dot_bytes(builder, builder.xor(w, _splat(BYTES, 128)) if flip else w, x)
        dots += [_select(builder, both, both, range(8)), _select(builder, both, both, range(8, 16))]
    sums = _group_sums(builder, dots)  # <8 x i32>: Σ q xq of each group
    if offset is not None:
        sums32 = _sums_of_32(context, builder, xs_t, xs_v, k)  # Σ xq of each group
        sums = builder.sub(sums, builder.mul(sums32, _splat(sums.type, offset)))
    return _sum_floats(builder, builder.fmul(d, builder.sitofp(sums, F8)))


def _group_sums(builder, groups):
    """<8 x i32> whose lane g is the sum of groups[g]'s 8 lanes (8 vectors <8 x i32>).

    vphaddd adds neighbouring lanes of two vectors within each 128-bit half. Two rounds leave
    groups 0-3 in `low`: lane g of its low half holds the sum of group g's lanes 0-3, lane g of
    its high half that of lanes 4-7; groups 4-7 likewise in `high`. Adding the halves finishes:
    6 vphaddd, 2 shuffles and an add for all 8 groups, where a horizontal sum each took ~6."""
    I32x8 = ir.VectorType(I32, 8)
    phadd = _llvm_function(builder, "llvm.x86.avx2.phadd.d", I32x8, [I32x8, I32x8])
    pairs = [builder.call(phadd, [groups[i], groups[i + 1]]) for i in range(0, 8, 2)]
    low, high = (builder.call(phadd, pairs[i : i + 2]) for i in (0, 2))  # groups 0-3, 4-7
    # low = [g0 g1 g2 g3 (lanes 0-3 of each) | g0 g1 g2 g3 (lanes 4-7)], high likewise
    firsts = _select(builder, low, high, [0, 1, 2, 3, 8, 9, 10, 11])
    seconds = _select(builder, low, high, [4, 5, 6, 7, 12, 13, 14, 15])
    return builder.add(firsts, seconds)


def _group(context, builder, weights, d, xq, k, xs, offset=None):
    """float32 Σ_j w_j x_j over one group of 32 weights (`weights`: 32 bytes, as for _groups)
    and x ~ xq[k : k + 32], d its weight scale times its activations' scale: the end of a row
    whose length 256 does not divide (stories15M's 288)."""
    (xq_t, xq_v), (xs_t, xs_v) = xq, xs
    x = _load(context, builder, xq_t, xq_v, k, HALF_BYTES)
    if offset is None:
        dots = _sum_lanes(builder, _dot_signed(builder, weights, x))
    else:
        dots = _sum_lanes(builder, _dot_bytes(builder, weights, x))
        g = builder.udiv(k, ir.Constant(k.type, 16))
        sums = _sum_lanes(builder, _load(context, builder, xs_t, xs_v, g, ir.VectorType(I32, 2)))
        dots = builder.sub(dots, builder.mul(sums, I32(offset)))
    return builder.fmul(_to_float(builder, dots), d)


def _block_scales(context, builder, row, o, layout, xd, k):
    """<8 x float>: the fp16 d of the 8 blocks (`layout`) from byte o, times the activations'
    scale of each 32 from xd[k / 32]."""
    (row_t, row_v), (xd_t, xd_v) = row, xd
    d = ir.Constant(ir.VectorType(ir.HalfType(), 8), ir.Undefined)
    for blk in range(8):
        at = _at(builder, o, layout.bytes * blk + layout.d)
        bits = _load(context, builder, row_t, row_v, at, ir.IntType(16))
        d = builder.insert_element(d, builder.bitcast(bits, ir.HalfType()), I32(blk))
    F8 = ir.VectorType(F32, 8)
    x_scales = _load(context, builder, xd_t, xd_v, builder.udiv(k, ir.Constant(k.type, 32)), F8)
    return builder.fmul(builder.fpext(d, F8), x_scales)


def _nibbles32(context, builder, row, at):
    """<32 x i8>: the 16 bytes at `at` as 32 nibbles, the low ones (weights 0-15) first."""
    row_t, row_v = row
    V16 = ir.VectorType(I8, 16)
    q = _load(context, builder, row_t, row_v, at, V16)
    low, high = builder.and_(q, _splat(V16, 15)), builder.lshr(q, _splat(V16, 4))
    return _select(builder, low, high, range(32))


def _fifth_bits32(context, builder, row, at):
    """<32 x i8>: 16 where bit j of the little-endian uint32 at `at` is set (Q5_0's qh), else 0."""
    row_t, row_v = row
    qh = _load(context, builder, row_t, row_v, at, ir.VectorType(I8, 4))
    spread = _select(builder, qh, qh, [j // 8 for j in range(32)])  # byte j // 8 in lane j
    bits = ir.Constant(HALF_BYTES, [1 << (j % 8) for j in range(32)])
    is_set = builder.icmp_unsigned("!=", builder.and_(spread, bits), _splat(HALF_BYTES, 0))
    return builder.select(is_set, _splat(HALF_BYTES, 16), _splat(HALF_BYTES, 0))


def _q5_0_weights(context, builder, row, at):
    """<32 x i8>: the 5-bit values (0..31) of the Q5_0 block at byte `at`."""
    nibbles = _nibbles32(context, builder, row, _at(builder, at, Q5_0.qs))
    return builder.or_(nibbles, _fifth_bits32(context, builder, row, _at(builder, at, Q5_0.qh)))


# Each 32-weight block type: its layout, the 32 bytes of a block's weights at a byte offset,
# and the offset subtracted from them (None: signed bytes).
BLOCKS_32 = {
    "Q8_0": (Q8_0, lambda c, b, row, at: _load(c, b, *row, _at(b, at, Q8_0.qs), HALF_BYTES), None),
    "Q4_0": (Q4_0, lambda c, b, row, at: _nibbles32(c, b, row, _at(b, at, Q4_0.qs)), 8),
    "Q5_0": (Q5_0, _q5_0_weights, 16),
}


def _blocks_codegen(kind: str):
    """The codegen of 8 consecutive 32-weight blocks of `kind` (256 weights)."""
    layout, weights_at, offset = BLOCKS_32[kind]

    def codegen(context, builder, signature, args):
        row_v, o_v, xq_v, k_v, xs_v, xd_v = args
        row_t, _, xq_t, _, xs_t, xd_t = signature.args
        _prefetch_ahead(context, builder, row_t, row_v, o_v, 8 * layout.bytes)
        row = (row_t, row_v)
        d = _block_scales(context, builder, row, o_v, layout, (xd_t, xd_v), k_v)

        def weights(p):  # blocks 2p and 2p + 1: 32 bytes each
            first, second = (
                weights_at(context, builder, row, _at(builder, o_v, layout.bytes * (2 * p + t)))
                for t in (0, 1)
            )
            return _select(builder, first, second, range(64))

        xq, xs = (xq_t, xq_v), (xs_t, xs_v)
        return _groups(context, builder, weights, d, xq, k_v, xs, offset)

    return codegen


def _block_codegen(kind: str):
    """The codegen of one 32-weight block of `kind`."""
    layout, weights_at, offset = BLOCKS_32[kind]

    def codegen(context, builder, signature, args):
        row_v, o_v, xq_v, k_v, xs_v, xd_v = args
        row_t, _, xq_t, _, xs_t, _ = signature.args
        d = _half(context, builder, row_t, row_v, _at(builder, o_v, layout.d))
        w = weights_at(context, builder, (row_t, row_v), o_v)
        xq, xs = (xq_t, xq_v), (xs_t, xs_v)
        return _group(context, builder, w, builder.fmul(d, xd_v), xq, k_v, xs, offset)

    return codegen


@intrinsic
def _q8_0_blocks(typingctx, row, o, xq, k, xs, xd):
    """float32 Σ_j w_j x_j over the 8 Q8_0 blocks (256 weights) from row[o] and activations
    x ~ xd[k/32 + t] * xq[k + 32t : k + 32t + 32] for block t (scales per 32, as llama.cpp
    rounds activations for Q8_0 weights; xs: sums of each 16 of xq). w = d q."""
    return types.float32(row, o, xq, k, xs, xd), _blocks_codegen("Q8_0")


@intrinsic
def _q8_0_block(typingctx, row, o, xq, k, xs, xd):
    """float32 Σ_j w_j x_j over the one Q8_0 block at row[o] and x ~ xd * xq[k : k + 32]."""
    return types.float32(row, o, xq, k, xs, xd), _block_codegen("Q8_0")


@intrinsic
def _q4_0_blocks(typingctx, row, o, xq, k, xs, xd):
    """As _q8_0_blocks for Q4_0 blocks: w = d (q - 8), q the 16 bytes' nibbles."""
    return types.float32(row, o, xq, k, xs, xd), _blocks_codegen("Q4_0")


@intrinsic
def _q4_0_block(typingctx, row, o, xq, k, xs, xd):
    """As _q8_0_block for one Q4_0 block."""
    return types.float32(row, o, xq, k, xs, xd), _block_codegen("Q4_0")


@intrinsic
def _q5_0_blocks(typingctx, row, o, xq, k, xs, xd):
    """As _q8_0_blocks for Q5_0 blocks: w = d (q - 16), q a nibble and a fifth bit from qh."""
    return types.float32(row, o, xq, k, xs, xd), _blocks_codegen("Q5_0")


@intrinsic
def _q5_0_block(typingctx, row, o, xq, k, xs, xd):
    """As _q8_0_block for one Q5_0 block."""
    return types.float32(row, o, xq, k, xs, xd), _block_codegen("Q5_0")


@njit(**JIT)
def matmul_q8_0(raw, x, out):
    """raw (N, K/32 * Q8_0.bytes) uint8 Q8_0 blocks; x (B, K) float32 -> out (B, N). Eight
    blocks at a time, then single blocks where 256 does not divide K."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, 32)  # (B, K) int8, (B, K/32) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q8_0_blocks(row, i * 8 * Q8_0.bytes, xq[b], i * QK, xs[b], xd[b])
                for i in range(K // QK * 8, K // 32):
                    o = i * Q8_0.bytes
                    total += _q8_0_block(row, o, xq[b], i * 32, xs[b], xd[b, i])
                out[b, n] = total


@njit(**JIT)
def matmul_q4_0(raw, x, out):
    """raw (N, K/32 * Q4_0.bytes) uint8 Q4_0 blocks; x (B, K) float32 -> out (B, N), as
    matmul_q8_0."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, 32)  # (B, K) int8, (B, K/32) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q4_0_blocks(row, i * 8 * Q4_0.bytes, xq[b], i * QK, xs[b], xd[b])
                for i in range(K // QK * 8, K // 32):
                    o = i * Q4_0.bytes
                    total += _q4_0_block(row, o, xq[b], i * 32, xs[b], xd[b, i])
                out[b, n] = total


@njit(**JIT)
def matmul_q5_0(raw, x, out):
    """raw (N, K/32 * Q5_0.bytes) uint8 Q5_0 blocks; x (B, K) float32 -> out (B, N), as
    matmul_q8_0 (stories15M's Q4_K_M file keeps most matrices in Q5_0: rows of 288)."""
    N, K = raw.shape[0], x.shape[1]
    xq, xd, xs = quantize_rows(x, 32)  # (B, K) int8, (B, K/32) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _q5_0_blocks(row, i * 8 * Q5_0.bytes, xq[b], i * QK, xs[b], xd[b])
                for i in range(K // QK * 8, K // 32):
                    o = i * Q5_0.bytes
                    total += _q5_0_block(row, o, xq[b], i * 32, xs[b], xd[b, i])
                out[b, n] = total


# ---------------------------------------------------------------- this project's int8


@intrinsic
def _int8_groups(typingctx, q, scales, xq, k, xs, xd):
    """float32 Σ_j w_j x_j over weights q[k : k + 256] (int8, 8 groups of 32, w = scale * q with
    scales[k/32 + t] for group t: packed.py's int8) and activations rounded as for Q8_0."""

    def codegen(context, builder, signature, args):
        q_v, scales_v, xq_v, k_v, xs_v, xd_v = args
        q_t, scales_t, xq_t, _, xs_t, xd_t = signature.args
        _prefetch_ahead(context, builder, q_t, q_v, k_v, QK)
        F8 = ir.VectorType(F32, 8)
        group = builder.udiv(k_v, ir.Constant(k_v.type, 32))
        d = builder.fmul(  # (8,) weight scale × activation scale
            _load(context, builder, scales_t, scales_v, group, F8),
            _load(context, builder, xd_t, xd_v, group, F8),
        )

        def weights(p):  # groups 2p and 2p + 1: 64 consecutive bytes
            return _load(context, builder, q_t, q_v, _at(builder, k_v, 64 * p), BYTES)

        return _groups(context, builder, weights, d, (xq_t, xq_v), k_v, (xs_t, xs_v))

    return types.float32(q, scales, xq, k, xs, xd), codegen


@intrinsic
def _int8_group(typingctx, q, k, xq, d):
    """float32 Σ_j w_j x_j over one group of 32 weights q[k : k + 32] and xq[k : k + 32], d its
    weight scale times its activations' scale."""

    def codegen(context, builder, signature, args):
        q_v, k_v, xq_v, d_v = args
        q_t, _, xq_t, _ = signature.args
        w = _load(context, builder, q_t, q_v, k_v, HALF_BYTES)
        return _group(context, builder, w, d_v, (xq_t, xq_v), k_v, (None, None))

    return types.float32(q, k, xq, d), codegen


@njit(**JIT)
def matmul_int8(q, scales, x, out):
    """q (N, K) int8, scales (N, K/32) float32; x (B, K) float32 -> out (B, N)."""
    N, K = q.shape
    xq, xd, xs = quantize_rows(x, 32)  # (B, K) int8, (B, K/32) float32, (B, K/16) int32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row, row_scales = q[n], scales[n]
                total = np.float32(0)
                for i in range(K // QK):
                    total += _int8_groups(row, row_scales, xq[b], i * QK, xs[b], xd[b])
                for i in range(K // QK * 8, K // 32):
                    total += _int8_group(row, i * 32, xq[b], row_scales[i] * xd[b, i])
                out[b, n] = total


def supports(rows) -> bool:
    """Whether a kernel here multiplies this packed.PackedRows (numba_jit.supports has checked
    that int8 has one scale per 32; K-quant rows are whole 256s by construction)."""
    return rows.kind in KINDS


# packed.PackedRows kind -> kernel(rows, x, out), as numba_jit.KINDS
KINDS = {
    "Q4_0": lambda r, x, out: matmul_q4_0(r.data, x, out),
    "Q5_0": lambda r, x, out: matmul_q5_0(r.data, x, out),
    "Q4_K": lambda r, x, out: matmul_q4_k(r.data, x, out),
    "Q5_K": lambda r, x, out: matmul_q5_k(r.data, x, out),
    "Q6_K": lambda r, x, out: matmul_q6_k(r.data, x, out),
    "Q8_0": lambda r, x, out: matmul_q8_0(r.data, x, out),
    "int8": lambda r, x, out: matmul_int8(r.data, r.scales.reshape(r.shape[0], -1), x, out),
}
