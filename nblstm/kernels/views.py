"""Views of arrays for the hot loops of the CPU kernels: without Numba's reference counting, and
typed so that LLVM vectorises loops over them (a row of a sliced matrix has, as far as Numba knows,
an unknown stride)."""
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import JIT_OPTIONS


@intrinsic
def _address_as_pointer(typingctx, address, dtype):
    """The integer ``address`` as a pointer to ``dtype`` elements (for numba.carray)."""
    pointer_type = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, dtype), codegen


@intrinsic
def borrowed(typingctx, arrays):
    """``arrays`` (an array, or a tuple of arrays) themselves, as views that Numba does not
    reference-count.

    Numba counts the references to an array's buffer with an atomic add at every
    view it makes (a row, a slice, an argument passed on), about 20 cycles each,
    and a time step of a small LSTM makes dozens: at hidden 8, batch 1 they took
    45% of the step.  Views of a borrowed array inherit its empty reference count
    and cost nothing.  Borrow only arguments, for the duration of the call that
    received them: a borrowed array must never be returned or stored.
    """

    def borrow(context, builder, array_type, value):
        view = context.make_array(array_type)(context, builder, value=value)
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    def codegen(context, builder, signature, args):
        if isinstance(arrays, types.Array):
            return borrow(context, builder, arrays, args[0])
        result = args[0]
        for index, array_type in enumerate(arrays.types):
            value = borrow(context, builder, array_type, builder.extract_value(args[0], index))
            result = builder.insert_value(result, value, index)
        return result

    return arrays(arrays), codegen


@njit(**JIT_OPTIONS)
def row_of(matrix, i):
    """Row i of a 2-D array with a contiguous last axis, typed as a C-contiguous 1-D array.

    A row of a sliced ('A' layout) matrix has an unknown stride as far as Numba
    knows, which stops LLVM from vectorising loops over it; this view does not.
    """
    return carray(_address_as_pointer(matrix[i:].ctypes.data, matrix.dtype), matrix.shape[1])


@njit(**JIT_OPTIONS)
def flat_rows(matrix):
    """(flat, stride): a 2-D array with a contiguous last axis as one C-contiguous 1-D array over
    its memory, row i starting at i * stride."""
    stride = matrix.strides[0] // matrix.itemsize
    size = (matrix.shape[0] - 1) * stride + matrix.shape[1] if matrix.shape[0] > 0 else 0
    return carray(_address_as_pointer(matrix.ctypes.data, matrix.dtype), size), stride


@njit(**JIT_OPTIONS)
def flat_block(array, i):
    """array[i] of a C-contiguous 3-D array as a flat 1-D array (array[i].reshape(-1) without the
    reshape's call into Numba's runtime, which costs more than a small product over the block)."""
    return carray(_address_as_pointer(array[i:].ctypes.data, array.dtype), array.shape[1] * array.shape[2])
