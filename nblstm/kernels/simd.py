"""SIMD vectors in Numba: LLVM vector values, for the kernels that need them (``tiles.py``, ``packed.py``, ``blas.py``).

LLVM's auto-vectoriser handles element-wise loops well, but a matrix-product
microkernel needs its accumulators held in registers across the whole
reduction, which Numba arrays cannot express.  A ``Vector`` is an LLVM vector
value (``<16 x float>`` / ``<8 x double>`` on AVX-512 machines, half that
otherwise) that lives in a register like any scalar; the intrinsics below load,
store, broadcast, add and fused-multiply-add them, and sum the lanes of several (as
scalars or as vectors); ``prefetch`` asks for a cache line ahead of its use.

``vector_lanes(dtype)`` gives the lane count from Python; inside kernels
``lanes_of(array)`` is the same number as a compile-time constant.
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model


def _vector_bits():
    """512 where the CPU has AVX-512 (32 vector registers), else 256."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    return 512 if "+avx512f" in features else 256


VECTOR_BITS = _vector_bits()


def vector_lanes(dtype):
    """Elements of ``dtype`` in one vector."""
    return VECTOR_BITS // (8 * (dtype.itemsize if isinstance(dtype, np.dtype) else np.dtype(dtype).itemsize))


class Vector(types.Type):
    """A SIMD vector of ``lanes`` elements of a float type."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VECTOR_BITS // dtype.bitwidth
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _element_pointer(context, builder, array_type, array, index):
    """Address of element ``index`` of a 1-D C-contiguous array."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


def _check_row(array):
    return isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C" and \
        array.dtype in (types.float32, types.float64)


@intrinsic
def lanes_of(typingctx, array):
    """The lane count of ``array``'s dtype, a compile-time constant."""
    lanes = VECTOR_BITS // array.dtype.bitwidth

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.IntType(64), lanes)

    return types.intp(array), codegen


@intrinsic
def vload(typingctx, row, index):
    """The vector row[index:index + lanes] of a 1-D C-contiguous float array (no bounds check)."""
    if not _check_row(row):
        return None
    vector = Vector(row.dtype)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        vector_pointer = builder.bitcast(pointer, context.get_value_type(vector).as_pointer())
        return builder.load(vector_pointer, align=row.dtype.bitwidth // 8)

    return vector(row, index), codegen


@intrinsic
def vstore(typingctx, row, index, value):
    """row[index:index + lanes] = value (no bounds check)."""
    if not _check_row(row) or not isinstance(value, Vector) or value.dtype != row.dtype:
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, args[2].type.as_pointer()), align=row.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(row, index, value), codegen


@intrinsic
def vsplat(typingctx, scalar):
    """A vector with ``scalar`` in every lane."""
    if scalar not in (types.float32, types.float64):
        return None
    vector = Vector(scalar)

    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(vector)
        undefined = ir.Constant(vector_type, ir.Undefined)
        first = builder.insert_element(undefined, args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes)
        return builder.shuffle_vector(first, undefined, mask)

    return vector(scalar), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b, lane by lane."""
    if not isinstance(a, Vector) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, lane by lane, with one rounding (a fused multiply-add)."""
    if not isinstance(a, Vector) or not a == b == c:
        return None

    def codegen(context, builder, signature, args):
        vector_type = args[0].type
        name = f"llvm.fma.v{vector_type.count}{vector_type.element.intrinsic_name}"
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
                                                  name)
        return builder.call(function, args)

    return a(a, b, c), codegen


@intrinsic
def prefetch(typingctx, row, index):
    """Ask for the cache line that holds row[index] to be loaded into the L1 cache (a hint, no
    bounds check: it never faults and does not wait for the line)."""
    if not _check_row(row):
        return None

    def codegen(context, builder, signature, args):
        pointer = builder.bitcast(_element_pointer(context, builder, signature.args[0], args[0], args[1]),
                                  ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0")
        # read (0), keep in every cache level (locality 3), data cache (1)
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(row, index), codegen


def _sum_lanes(builder, vectors, lanes):
    """The lane sums of ``vectors`` (LLVM vector values of ``lanes`` lanes), summed together: each stage adds the
    halves of every group of lanes of two vectors into one (two shuffles and an addition for two vectors), until
    each vector holds one group of lanes per input, which then halves in place.  Returns (sums, groups): input i's
    sum is lane i % groups of sums[i // groups]."""

    def halve(a, b, width):
        """Vectors a, b of groups of ``width`` lanes -> one of groups of width / 2 lanes, each the sum
        of a group's halves: a's groups, then b's (b may be a: its groups then come twice)."""
        half = width // 2
        low = [base + start + j for base in (0, lanes) for start in range(0, lanes, width) for j in range(half)]
        return builder.fadd(_shuffle(builder, a, b, low), _shuffle(builder, a, b, [i + half for i in low]))

    width = lanes  # lanes per group: each group sums to one input's total
    while len(vectors) > 1 and width > 1:
        vectors = [halve(vectors[i], vectors[i + 1] if i + 1 < len(vectors) else vectors[i], width)
                   for i in range(0, len(vectors), 2)]
        width //= 2
    groups = lanes // width
    while width > 1:
        vectors = [halve(vector, vector, width) for vector in vectors]
        width //= 2
    return vectors, groups


@intrinsic
def vsums(typingctx, vectors):
    """The lane sums of a tuple of vectors, a tuple of scalars, in an order of additions of its own.

    Where each vector summed alone takes log2(lanes) shuffles and additions, the vectors are
    summed together (``_sum_lanes``): 8 vectors of 16 lanes take 7 + 1 additions, not 32.
    """
    if not isinstance(vectors, types.UniTuple) or not isinstance(vectors.dtype, Vector):
        return None
    count, dtype, lanes = vectors.count, vectors.dtype.dtype, vectors.dtype.lanes

    def codegen(context, builder, signature, args):
        sums, groups = _sum_lanes(builder, [builder.extract_value(args[0], i) for i in range(count)], lanes)
        scalars = [builder.extract_element(sums[i // groups], ir.Constant(ir.IntType(32), i % groups))
                   for i in range(count)]
        return context.make_tuple(builder, signature.return_type, scalars)

    return types.UniTuple(dtype, count)(vectors), codegen


@intrinsic
def vsums_vectors(typingctx, vectors):
    """The lane sums of a tuple of vectors, a whole number of vectors' worth, as vectors: lane j of the
    v-th holds the sum of input v * lanes + j (``vsums`` without taking the sums out of the vectors)."""
    if (not isinstance(vectors, types.UniTuple) or not isinstance(vectors.dtype, Vector)
            or vectors.count % vectors.dtype.lanes):
        return None
    count, lanes = vectors.count, vectors.dtype.lanes

    def codegen(context, builder, signature, args):
        sums, _ = _sum_lanes(builder, [builder.extract_value(args[0], i) for i in range(count)], lanes)
        return context.make_tuple(builder, signature.return_type, sums)

    return types.UniTuple(vectors.dtype, count // lanes)(vectors), codegen


def _shuffle(builder, a, b, indices):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices)))


@intrinsic
def transpose_block(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride):
    """Transpose a lanes x lanes block between two flat arrays of one dtype (no bounds check):
    dst[dst_offset + j * dst_stride + i] = src[src_offset + i * src_stride + j] for i, j < lanes.

    lanes vector loads, a network of log2(lanes) stages of two-vector shuffles (each stage
    swaps the off-diagonal sub-blocks of every 2d x 2d block: d = lanes/2, ..., 1), lanes
    vector stores: a few instructions per vector where element by element takes lanes**2.
    """
    if not (_check_row(src) and _check_row(dst)) or src.dtype != dst.dtype:
        return None
    lanes = VECTOR_BITS // src.dtype.bitwidth

    def codegen(context, builder, signature, args):
        src_array, src_start, src_step, dst_array, dst_start, dst_step = args
        vector_type = ir.VectorType(context.get_value_type(src.dtype), lanes)
        align = src.dtype.bitwidth // 8

        def address(array_type, array, start, step, i):
            index = builder.add(start, builder.mul(step, ir.Constant(step.type, i)))
            return builder.bitcast(_element_pointer(context, builder, array_type, array, index),
                                   vector_type.as_pointer())

        rows = [builder.load(address(src, src_array, src_start, src_step, i), align=align) for i in range(lanes)]
        d = lanes // 2
        while d >= 1:
            low = [j if (j & d) == 0 else lanes + j - d for j in range(lanes)]
            high = [j + d if (j & d) == 0 else lanes + j for j in range(lanes)]
            for i in range(lanes):
                if (i & d) == 0:
                    top, bottom = rows[i], rows[i + d]
                    rows[i] = _shuffle(builder, top, bottom, low)
                    rows[i + d] = _shuffle(builder, top, bottom, high)
            d //= 2
        for j in range(lanes):
            builder.store(rows[j], address(dst, dst_array, dst_start, dst_step, j), align=align)
        return context.get_dummy_value()

    return types.none(src, src_offset, src_stride, dst, dst_offset, dst_stride), codegen
