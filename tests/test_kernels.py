"""The building blocks of the CPU kernels: activations (with their error bound), gemm, work splitting."""
import os

import numpy as np
import pytest
import numba
from numba import njit, prange

from nblstm._config import JIT_OPTIONS
from nblstm.kernels import barrier, packed, simd
from nblstm.kernels.activations import sigmoid, tanh
from nblstm.kernels.blas import (gemm, single_threaded_blas, uses_blas, uses_narrow, uses_panels, uses_row_vectors,
                                 uses_vectors)
from nblstm.kernels.views import borrowed
from nblstm.kernels.parallel import grid_share, part_range, share_first_rows, share_segment, shares_split_blocks
from nblstm.kernels.tiles import TILE_ROWS


@njit(cache=False)
def _fill_rows_of_borrowed(matrix, vector, row, value):
    view = borrowed(matrix)
    view[row][:] = value
    matrix_view, vector_view = borrowed((matrix, vector))  # a tuple: each array borrowed
    vector_view[:] = matrix_view[row, matrix_view.shape[1] - 1]
    return view.shape, view[row, view.shape[1] - 1]


@pytest.mark.parametrize("columns", [slice(None), slice(1, 4)], ids=["whole", "column slice"])
def test_borrowed_view_is_the_same_array(columns):
    """A borrowed view has the shape, strides and memory of its array (only its reference count differs)."""
    matrix, vector = np.zeros((3, 5)), np.zeros(2)
    shape, last = _fill_rows_of_borrowed(matrix[:, columns], vector, 1, 2.5)
    expected = np.zeros((3, 5))
    expected[1, columns] = 2.5
    assert shape == matrix[:, columns].shape and last == 2.5
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(vector, [2.5, 2.5])


@njit(**dict(JIT_OPTIONS, cache=False))  # not cached: it would keep stale copies of the activations
def _apply(x, sigmoid_out, tanh_out):
    for i in range(x.size):
        sigmoid_out[i] = sigmoid(x[i])
        tanh_out[i] = tanh(x[i])


def _activations(x):
    s, t = np.empty_like(x), np.empty_like(x)
    _apply(x, s, t)
    return s, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_error_bound_over_the_whole_range(dtype):
    """The bound stated in nblstm.kernels.activations, against an extended-precision reference:
    float32 tanh within 8 ulp, sigmoid within 4e-7; float64 both within 4 ulp (sigmoid away from
    underflow) and sigmoid within 2e-16."""
    x = np.concatenate([np.linspace(-50, 50, 1_000_001), np.geomspace(1e-30, 50, 20001),
                        -np.geomspace(1e-30, 50, 20001), [0.0, -0.0]]).astype(dtype)
    s, t = _activations(x)
    xl = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        ref_s, ref_t = 1 / (1 + np.exp(-xl)), np.tanh(xl)
    ulp = lambda ours, ref: np.abs(ours - ref) / np.spacing(np.abs(ref).astype(dtype))
    if dtype == np.float32:
        assert ulp(t, ref_t).max() <= 8
        assert np.abs(s - ref_s).max() <= 4e-7
    else:
        normal = ref_s > np.finfo(dtype).tiny * 1e3  # away from underflow
        assert ulp(s, ref_s)[normal].max() <= 4
        assert ulp(t, ref_t).max() <= 4
        assert np.abs(s - ref_s).max() <= 2e-16
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.abs(t) <= 1)


def test_float32_sigmoid_is_tanh_of_half_bit_for_bit():
    """The halvings folded into the float32 sigmoid's coefficients are exact: it equals 1/2 + tanh(x/2)/2."""
    x = np.concatenate([np.linspace(-30, 30, 200_001), np.geomspace(1e-30, 30, 2001)]).astype(np.float32)
    _, tanh_of_half = _activations(x / 2)
    sigmoid_of_x, _ = _activations(x)
    np.testing.assert_array_equal(sigmoid_of_x, np.float32(0.5) + tanh_of_half / 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30], dtype)
    s, t = _activations(x)
    assert np.isnan(s[0]) and np.isnan(t[0])
    assert s[1] == 1 and s[2] < 1e-30 and s[3] == 0.5 and s[4] == 1 and s[5] < 1e-30
    np.testing.assert_array_equal(t[1:], [1, -1, 0, 1, -1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (2, 9, 4), (1, 80, 20), (16, 300, 256),
                                   (17, 33, 5), (64, 300, 256), (5, 0, 3), (4, 6, 0), (4, 70, 0),
                                   (8, 520, 260), (3, 1031, 257), (13, 517, 256), (2, 700, 760), (6, 300, 900),
                                   (8, 128, 32), (100, 128, 40), (1, 70, 32), (1, 13, 64), (1, 40, 512),
                                   (13, 16, 64), (9, 32, 20), (3, 8, 7), (70, 16, 1), (12, 8, 0)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gemm_matches_numpy(m, n, k, trans_a, trans_b, beta, dtype, rng):
    """Loops, SIMD dot products (a @ b.T at 3-16 rows, and at one row over whole vectors: 1 x 70 x 32 in
    groups of 16 rows of b and a last one of 8, 1 x 13 x 64, and 1 x 40 x 512, whose rows are too long
    for groups of 16), register tiles (a @ b at 2-100 rows and 64 columns or more, or one or two vectors of
    columns: 16 and 32 for float32, 8 and 16 for float64 on AVX-512; the tests below name the shapes)
    and BLAS (64 x 300 x 256; a @ b.T at 100 x 128 x 40) alike, on column slices of wider arrays;
    beta == 0 ignores NaN in c."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    wide = rng.standard_normal((m, n + 10)).astype(dtype)
    c = wide[:, 3:3 + n]
    if beta == 0:
        c[...] = np.nan
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b) + (beta * c if beta else 0)
    gemm(a, b, c, trans_a, trans_b, beta)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tolerance, atol=tolerance * max(k, 1))
    assert np.isfinite(wide[:, :3]).all() and np.isfinite(wide[:, 3 + n:]).all()  # outside c untouched


def test_one_row_over_whole_vectors_runs_as_simd_dot_products():
    """a @ b.T with one row of a and a reduction of two or more whole vectors (the shapes of
    ``test_gemm_matches_numpy`` on that path); any other goes to the loops."""
    for k, lanes in [(32, 16), (64, 16), (16, 8), (512, 16)]:
        assert uses_row_vectors(1, k, lanes, False, True), (k, lanes)
    for m, k, lanes in [(1, 16, 16), (1, 20, 16), (1, 100, 16), (2, 32, 16), (0, 32, 16)]:
        assert not uses_row_vectors(m, k, lanes, False, True), (m, k, lanes)
    assert not uses_row_vectors(1, 32, 16, False, False) and not uses_row_vectors(1, 32, 16, True, True)


def test_few_rows_run_as_simd_dot_products():
    """a @ b.T with 3-8 rows of a from k 32, up to 48 rows from k 128: the shapes
    ``test_gemm_matches_numpy`` checks on that path, and the edges of the rule."""
    for m, n, k in [(8, 520, 260), (3, 1031, 257), (13, 517, 256), (16, 300, 256), (6, 300, 900), (8, 128, 32),
                    (48, 2048, 512)]:
        assert uses_vectors(m, n, k, False, True) and not uses_blas(m, n, k, False, True, 16), (m, n, k)
    for m, n, k in [(2, 4096, 512), (1, 80, 20), (9, 128, 64), (49, 2048, 512), (4, 80, 20)]:
        assert not uses_vectors(m, n, k, False, True), (m, n, k)
    assert not uses_vectors(8, 2048, 512, False, False) and not uses_vectors(8, 2048, 512, True, True)


def test_products_by_a_panel_of_columns_or_more_run_as_register_tiles():
    """a @ b from 2 rows of a with 64 columns or more, whatever the rows where the columns are whole
    panels, up to 16 rows where a partial panel's columns follow as loops: the shapes
    ``test_gemm_matches_numpy`` checks on that path, and the edges."""
    for m, n, k in [(8, 520, 260), (13, 517, 256), (2, 700, 760), (6, 300, 900), (16, 300, 256), (100, 128, 40),
                    (2, 64, 1)]:
        assert uses_panels(m, n, k, False, False) and not uses_blas(m, n, k, False, False, 16), (m, n, k)
    for m, n, k in [(1, 4096, 512), (17, 300, 256), (64, 300, 256), (8, 63, 4096), (4, 70, 0)]:
        assert not uses_panels(m, n, k, False, False), (m, n, k)
    assert not uses_panels(8, 2048, 512, False, True) and not uses_panels(8, 2048, 512, True, True)


def test_products_of_one_or_two_vectors_of_columns_run_as_narrow_tiles():
    """a @ b with one or two whole vectors of columns runs as the narrow tiles whatever the rows and the
    reduction (the shapes ``test_gemm_matches_numpy`` checks on that path, 8-row and 4-row tiles and
    single rows); other widths, a transposed operand, or a panel of columns or more do not."""
    for m, n, k, lanes in [(13, 16, 64, 16), (9, 32, 20, 16), (3, 8, 7, 8), (70, 16, 1, 16), (12, 8, 0, 8),
                           (9, 16, 20, 8)]:
        assert uses_narrow(n, lanes, False, False) and not uses_blas(m, n, k, False, False, lanes), (m, n, k)
        assert not uses_panels(m, n, k, False, False)
    for n, lanes in [(48, 16), (24, 16), (24, 8), (64, 16), (0, 16)]:
        assert not uses_narrow(n, lanes, False, False), (n, lanes)
    assert not uses_narrow(16, 16, True, False) and not uses_narrow(16, 16, False, True)


def test_weight_gradient_products_run_as_register_tiles():
    """a.T @ b (d_gates.T @ inputs) with 64 columns or more runs on the tiles whatever the rows of c,
    a read in place: the shapes ``test_gemm_matches_numpy`` checks with trans_a; fewer columns, or an
    empty reduction, stay with BLAS or the loops."""
    for m, n, k in [(1, 80, 20), (16, 300, 256), (64, 300, 256), (2048, 512, 800), (3, 1031, 257), (4, 64, 1)]:
        assert uses_panels(m, n, k, True, False) and not uses_blas(m, n, k, True, False, 16), (m, n, k)
    assert not uses_panels(2048, 63, 800, True, False) and not uses_panels(4, 70, 0, True, False)


@njit(cache=False)
def _lane_sums(rows):
    """vsums of 1, 3 and 8 vectors: rows[0], rows[:3], rows[:8] (each row one vector)."""
    v0, v1, v2, v3 = simd.vload(rows[0], 0), simd.vload(rows[1], 0), simd.vload(rows[2], 0), simd.vload(rows[3], 0)
    v4, v5, v6, v7 = simd.vload(rows[4], 0), simd.vload(rows[5], 0), simd.vload(rows[6], 0), simd.vload(rows[7], 0)
    return simd.vsums((v0,)), simd.vsums((v0, v1, v2)), simd.vsums((v0, v1, v2, v3, v4, v5, v6, v7))


@njit(cache=False)
def _lane_sums_as_vectors(rows, out):
    """vsums_vectors of 16 vectors (rows[:16]), its vectors stored one after another in out."""
    v0, v1, v2, v3 = simd.vload(rows[0], 0), simd.vload(rows[1], 0), simd.vload(rows[2], 0), simd.vload(rows[3], 0)
    v4, v5, v6, v7 = simd.vload(rows[4], 0), simd.vload(rows[5], 0), simd.vload(rows[6], 0), simd.vload(rows[7], 0)
    v8, v9, v10, v11 = simd.vload(rows[8], 0), simd.vload(rows[9], 0), simd.vload(rows[10], 0), simd.vload(rows[11], 0)
    v12, v13 = simd.vload(rows[12], 0), simd.vload(rows[13], 0)
    v14, v15 = simd.vload(rows[14], 0), simd.vload(rows[15], 0)
    sums = simd.vsums_vectors((v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15))
    for i in range(len(sums)):
        simd.vstore(out, i * simd.lanes_of(out), sums[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_sums_add_the_lanes_of_each_vector(dtype, rng):
    rows = rng.integers(-50, 50, (16, simd.vector_lanes(dtype))).astype(dtype)  # integers: exact in any order
    one, three, eight = _lane_sums(rows)
    sums = rows.sum(axis=1)
    assert one == (sums[0],) and three == tuple(sums[:3]) and eight == tuple(sums[:8])
    as_vectors = np.full(16, np.nan, dtype)
    _lane_sums_as_vectors(rows, as_vectors)
    np.testing.assert_array_equal(as_vectors, sums)


def test_single_threaded_blas_limits_every_blas_and_restores_it():
    """The guard around parallel kernels: every loaded BLAS (NumPy's and SciPy's) on one thread inside,
    the caller's counts back after, also when nested and when the body raises."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    with threadpool_limits(2, user_api="blas"):
        assert blas_threads() and set(blas_threads()) == {2}
        with single_threaded_blas():
            assert set(blas_threads()) == {1}
            with single_threaded_blas():
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {2}
        with pytest.raises(KeyError), single_threaded_blas():
            raise KeyError
        assert set(blas_threads()) == {2}


def _assert_new_empty(array, shape, dtype):
    """``array`` is what np.empty(shape, dtype) gives, starting on a cache line when large."""
    from nblstm.engine import ALIGN_MIN_BYTES, CACHE_LINE

    assert array.shape == np.empty(shape).shape and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable
    if array.nbytes >= ALIGN_MIN_BYTES:
        assert array.ctypes.data % CACHE_LINE == 0
    array[...] = 1  # the whole array is ours to write


@pytest.mark.parametrize("shape", [(0, 5), (3, 7), 20, 5000, (2, 8, 128), (10, 8, 128), (100, 64, 256)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_aligned_starts_large_arrays_on_a_cache_line(shape, dtype):
    from nblstm.engine import empty_aligned

    _assert_new_empty(empty_aligned(shape, dtype), shape, dtype)


@pytest.mark.parametrize("shape", [(0, 5), (3, 7), (2, 8, 128), (10, 8, 128), (100, 64, 256)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_allocator_gives_a_new_aligned_array_at_every_call(shape, dtype):
    """The allocators a prepared forward keeps (``engine.empty_allocator``) for the arrays it returns."""
    from nblstm.engine import empty_allocator

    allocate = empty_allocator(shape, dtype)
    first, second = allocate(), allocate()
    assert not np.shares_memory(first, second)
    for array in (first, second):
        _assert_new_empty(array, shape, dtype)


@pytest.mark.parametrize("shape", [(0,), (5,), (3, 7), (2, 0, 64), (2, 8, 32, 64), (1, 65536)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_empty_aligned_starts_every_array_on_a_cache_line(shape, dtype):
    from nblstm.kernels.parallel import CACHE_LINE, empty_aligned

    arrays = [empty_aligned(shape, np.empty(1, dtype)) for _ in range(20)]  # allocations land at varied addresses
    for array in arrays:
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % CACHE_LINE == 0
        array[...] = 1  # the whole array is ours to write
    assert all(array.sum() == array.size for array in arrays)  # none overlaps another


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 1024])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 7])
def test_part_range_covers_everything_once(size, n_parts):
    bounds = [part_range(part, n_parts, size) for part in range(n_parts)]
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    for (start, stop), (next_start, _) in zip(bounds, bounds[1:]):
        assert start <= stop == next_start


@pytest.mark.parametrize("blocks", [1, 2, 3, 7, 8])
@pytest.mark.parametrize("rows", [1, 2, 6, 8, 13])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 5])
@pytest.mark.parametrize("row_tile", [1, 4, "rows"])
def test_grid_shares_cover_every_cell_once_and_split_blocks_only_between_tiles(blocks, rows, n_parts, row_tile):
    row_tile = rows if row_tile == "rows" else row_tile
    shares = [grid_share(part, n_parts, blocks, rows, row_tile) for part in range(n_parts)]
    owner = np.full((blocks, rows), -1)
    first_rows = np.zeros(blocks, int)
    for part, share in enumerate(shares):
        for segment in range(3):
            block_start, block_stop, row_start, row_stop = share_segment(share, segment, rows, 1, blocks)
            if block_stop > block_start and row_stop > row_start:
                assert (owner[block_start:block_stop, row_start:row_stop] == -1).all()
                owner[block_start:block_stop, row_start:row_stop] = part
                assert row_start % row_tile == 0 and (row_stop % row_tile == 0 or row_stop == rows)
        first_rows[slice(*share_first_rows(share))] += 1
    assert (owner >= 0).all() and (first_rows == 1).all()
    cells = np.bincount(owner.ravel(), minlength=n_parts)
    assert cells.max() - cells.min() <= row_tile * n_parts
    split = any(share[0][1] > 0 for share in shares)
    assert shares_split_blocks(n_parts, blocks, rows, row_tile) == split
    if (blocks, rows, n_parts, row_tile) == (7, 8, 2, 4):  # 3.5 panels each, not 4 and 3
        assert split and list(cells) == [28, 28]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,k,m", [(1, 1, 1), (5, 3, 2), (37, 13, 7), (64, 300, 9), (100, 33, 130)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("parallel", [False, True], ids=["vector-padding", "panel-padding"])
def test_packed_products_match_numpy(hidden, k, m, accumulate, parallel, dtype, rng):
    """gates (+)= a @ w.T in the padded gate layout, and c = a @ w with padded gate rows as the
    reduction, over every row tile shape (4-row tiles and single rows) and reduction block."""
    padded = packed.padded_hidden(hidden, dtype, parallel)
    width = packed.panel_width(dtype)
    w = rng.standard_normal((4 * hidden, k)).astype(dtype)
    a = rng.standard_normal((m, k)).astype(dtype)
    panels = np.empty((4 * padded // width, k, width), dtype)
    packed.pack_gate_rows(w, panels)
    gates = rng.standard_normal((m, 4 * padded)).astype(dtype)
    expected = (gates if accumulate else 0) + to_padded_layout(a @ w.T, hidden, padded)
    packed.gemm_packed(a, panels, gates, accumulate, 0, panels.shape[0], 0, m)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gates, expected, rtol=tolerance, atol=tolerance * k)

    d_gates = to_padded_layout(rng.standard_normal((m, 4 * hidden)).astype(dtype), hidden, padded)
    columns = np.empty((-(-k // width), 4 * padded, width), dtype)
    packed.pack_columns(w, columns)
    out = np.full((m, columns.shape[0] * width), np.nan, dtype)
    packed.gemm_packed(d_gates, columns, out, False, 0, columns.shape[0], 0, m)
    rows = np.empty((4 * padded, k), dtype)
    packed.to_padded_rows(w, rows)
    np.testing.assert_allclose(out[:, :k], d_gates @ rows, rtol=tolerance, atol=tolerance * 4 * padded)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 20, 64, 70])
@pytest.mark.parametrize("k_panels", [0.3, 1, 1.5, 3], ids=lambda p: f"{p}panels")
@pytest.mark.parametrize("panel_range", [(0, -1), (1, -1), (0, 1)], ids=str)
@pytest.mark.parametrize("parallel", [False, True], ids=["vector-padding", "panel-padding"])
def test_packed_columns_are_the_weights_with_zero_padding(hidden, k_panels, panel_range, parallel, dtype, rng):
    """packed[q, kk, c] = w[weight_row(kk), q * width + c], exactly, zero past w's columns and for padding
    units: whole panels (copied by vectors), a last partial one, and only the panels asked for."""
    padded = packed.padded_hidden(hidden, dtype, parallel)
    width = packed.panel_width(dtype)
    k = max(1, int(k_panels * width))
    w = rng.standard_normal((4 * hidden, k)).astype(dtype)
    columns = np.full((-(-k // width), 4 * padded, width), np.nan, dtype)
    first, stop = panel_range
    stop = columns.shape[0] if stop < 0 else min(stop, columns.shape[0])
    packed.pack_columns(w, columns, *panel_range)
    rows = np.array([packed.weight_row(kk, hidden, padded) for kk in range(4 * padded)])
    padded_w = np.zeros((4 * padded, columns.shape[0] * width), dtype)
    padded_w[rows >= 0, :k] = w[rows[rows >= 0]]
    expected = padded_w.reshape(4 * padded, -1, width).transpose(1, 0, 2)
    np.testing.assert_array_equal(columns[first:stop], expected[first:stop])
    assert np.isnan(columns[:first]).all() and np.isnan(columns[stop:]).all()  # the others untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,k", [(1, 1), (20, 20), (20, 32), (37, 13), (64, 40), (100, 33)])
@pytest.mark.parametrize("parallel", [False, True], ids=["vector-padding", "panel-padding"])
def test_packed_gate_rows_are_the_weights_transposed_with_zero_padding(hidden, k, parallel, dtype, rng):
    """packed[p, kk, c] = w[weight_row(p * width + c), kk], exactly, zero for padding units: blocks of
    consecutive rows (transposed by SIMD, their last k % lanes values one by one), blocks with padding,
    panels that span two gates (vector padding)."""
    padded = packed.padded_hidden(hidden, dtype, parallel)
    width = packed.panel_width(dtype)
    w = rng.standard_normal((4 * hidden, k)).astype(dtype)
    panels = np.full((4 * padded // width, k, width), np.nan, dtype)
    packed.pack_gate_rows(w, panels)
    rows = np.array([packed.weight_row(column, hidden, padded) for column in range(4 * padded)])
    expected = np.where(rows[:, None] >= 0, w[rows], 0).reshape(-1, width, k).transpose(0, 2, 1)
    np.testing.assert_array_equal(panels, expected)
    for first_column in (0, 5, padded - 1, 2 * padded + 3):
        found = np.empty(4 * padded - first_column, np.intp)
        packed.weight_rows(first_column, hidden, padded, found)
        np.testing.assert_array_equal(found, rows[first_column:])


@njit
def _transpose_block(src, src_offset, src_stride, dst, dst_offset, dst_stride):
    simd.transpose_block(src, src_offset, src_stride, dst, dst_offset, dst_stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block_moves_one_square_and_nothing_else(dtype):
    """The packing's SIMD transpose: a lanes x lanes block of one strided array lands transposed in
    another, every other element untouched."""
    lanes = simd.vector_lanes(dtype)
    src = np.arange(40 * 50, dtype=dtype)
    dst = np.full(60 * 70, -1, dtype)
    _transpose_block(src, 3 * 50 + 5, 50, dst, 2 * 70 + 7, 70)
    written = dst.reshape(60, 70)[2:2 + lanes, 7:7 + lanes]
    np.testing.assert_array_equal(written, src.reshape(40, 50)[3:3 + lanes, 5:5 + lanes].T)
    assert (dst == -1).sum() == dst.size - lanes * lanes


@pytest.mark.parametrize("hidden", [1, 40, 100, 150])
@pytest.mark.parametrize("n_parts", [2, 3])
def test_threads_packing_their_own_units_fill_exactly_their_panels(hidden, n_parts, rng):
    """Each part of a "together" region packs the panels of every gate whose first batch row is in its
    share (``grid_share``, batch 8): alone it writes those and no other; all parts together give the
    whole packing."""
    width = packed.panel_width(np.float32)
    padded = packed.padded_hidden(hidden, np.float32, True)
    w = rng.standard_normal((4 * hidden, 7)).astype(np.float32)
    whole = np.empty((4 * padded // width, 7, width), np.float32)
    packed.pack_gate_rows(w, whole)
    in_parts = np.full_like(whole, np.nan)
    for part in range(n_parts):
        first, stop = share_first_rows(grid_share(part, n_parts, padded // width, 8, 4))
        start, stop = first * width, stop * width
        alone = np.full_like(whole, np.nan)
        packed.pack_gate_rows(w, alone, start, stop)
        packed.pack_gate_rows(w, in_parts, start, stop)
        mine = [gate * (padded // width) + p for gate in range(4) for p in range(start // width, stop // width)]
        np.testing.assert_array_equal(alone[mine], whole[mine])
        assert np.isnan(np.delete(alone, mine, axis=0)).all()
    np.testing.assert_array_equal(in_parts, whole)


@pytest.mark.parametrize("panel_start, panel_stop", [(0, 8), (3, 7), (5, 6)])
def test_packed_product_visits_panels_in_either_order(panel_start, panel_stop, rng):
    """Descending panel order (the time loops alternate it) gives the same bits and touches only its panels."""
    width = packed.panel_width(np.float32)
    w = rng.standard_normal((8 * width, 150)).astype(np.float32)
    a = rng.standard_normal((9, 150)).astype(np.float32)
    panels = np.empty((8, 150, width), np.float32)
    packed.pack_gate_rows(w, panels)
    start = rng.standard_normal((9, 8 * width)).astype(np.float32)
    ascending, descending = start.copy(), start.copy()
    packed.gemm_packed(a, panels, ascending, True, panel_start, panel_stop, 0, 9)
    packed.gemm_packed(a, panels, descending, True, panel_start, panel_stop, 0, 9, True)
    np.testing.assert_array_equal(descending, ascending)
    outside = np.r_[0:panel_start * width, panel_stop * width:8 * width]
    np.testing.assert_array_equal(descending[:, outside], start[:, outside])
    assert not np.array_equal(descending, start)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 20, 150])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("descending", [False, True])
def test_step_products_match_the_packed_product(k, m, accumulate, descending, dtype, rng):
    """``gemm_packed_step`` (a batch of one row as ``gemm_packed_row``) writes what ``gemm_packed`` does, bit
    for bit up to one block of the reduction, over its panels only."""
    width = packed.panel_width(dtype)
    w = rng.standard_normal((8 * width, k)).astype(dtype)
    a = rng.standard_normal((m, k)).astype(dtype)
    panels = np.empty((8, k, width), dtype)
    packed.pack_gate_rows(w, panels)
    start = rng.standard_normal((m, 8 * width)).astype(dtype)
    step, whole = start.copy(), start.copy()
    packed.gemm_packed_step(a, panels, step, accumulate, 2, 7, descending)
    packed.gemm_packed(a, panels, whole, accumulate, 2, 7, 0, m, descending)
    inside, outside = np.r_[2 * width:7 * width], np.r_[0:2 * width, 7 * width:8 * width]
    expected = (start[:, inside] if accumulate else 0) + a @ w[inside].T
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(step[:, inside], expected, rtol=tolerance, atol=tolerance * k)
    np.testing.assert_array_equal(step[:, outside], start[:, outside])
    if k <= packed.K_BLOCK:
        np.testing.assert_array_equal(step, whole)


def to_padded_layout(values, hidden, padded):
    """(m, 4*hidden) in PyTorch's gate layout -> (m, 4*padded) with zero padding."""
    result = np.zeros((values.shape[0], 4 * padded), values.dtype)
    for gate in range(4):
        result[:, gate * padded:gate * padded + hidden] = values[:, gate * hidden:(gate + 1) * hidden]
    return result


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_rows_round_trip(dtype, rng):
    w = rng.standard_normal((4 * 37, 5)).astype(dtype)
    padded = packed.padded_hidden(37, dtype, True)
    rows = np.empty((4 * padded, 5), dtype)
    packed.to_padded_rows(w, rows)
    np.testing.assert_array_equal(rows, to_padded_layout(w.T, 37, padded).T)
    total = np.ones_like(w)
    packed.add_from_padded_rows(rows, total, True)
    np.testing.assert_array_equal(total, w + 1)
    total[...] = np.nan
    packed.add_from_padded_rows(rows, total, False)
    np.testing.assert_array_equal(total, w)


@njit(parallel=True)
def _barrier_rounds(n_parts, rounds, seen):
    state = np.zeros(barrier.BARRIER_STATE_SIZE, np.int64)
    started = np.zeros(n_parts, np.bool_)
    for part in prange(n_parts):
        started[part] = barrier.arrive_together(state, n_parts)
        if started[part]:
            for step in range(rounds):
                seen[step, part] = step
                barrier.wait_for_all(state, n_parts)
                for other in range(n_parts):  # every part's write of this round is visible
                    if seen[step, other] != step:
                        seen[step, part] = -1
                barrier.wait_for_all(state, n_parts)
    return started


@njit
def _serial_handshake(n_parts):
    return barrier.arrive_together(np.zeros(barrier.BARRIER_STATE_SIZE, np.int64), n_parts)


def test_barrier_orders_every_round():
    n_parts = numba.get_num_threads()
    seen = np.full((2000, n_parts), -2, np.int64)
    started = _barrier_rounds(n_parts, 2000, seen)
    if started.all():
        assert (seen == np.arange(2000)[:, None]).all()
    else:  # a threading layer that did not run the parts together: nothing was done
        assert not started.any() and (seen == -2).all()


def test_handshake_calls_off_parts_that_cannot_meet():
    """One thread running a two-part handshake alone gives up instead of waiting forever."""
    assert not _serial_handshake(2)
    assert _serial_handshake(1)


@njit
def _current_cpu():
    return barrier._current_cpu()


@njit
def _cpu_after_moving_off(cpu):
    barrier._move_off_cpu(cpu)
    return barrier._current_cpu()


@njit
def _allowed_cpus():
    mask = np.zeros(barrier._CPU_SET_WORDS, np.int64)
    return barrier._get_affinity(mask), mask


def test_affinity_mask_reads_as_the_os_reports_it():
    status, mask = _allowed_cpus()
    assert status == 0
    read = {word * 64 + bit for word in range(mask.shape[0]) for bit in range(64) if (int(mask[word]) >> bit) & 1}
    assert read == os.sched_getaffinity(0)


def test_a_thread_moves_off_a_cpu_and_keeps_its_allowed_cpus():
    """What a thread does when it arrives on the first arriver's CPU (after the process sat idle
    the kernel can wake it there while another core idles)."""
    allowed = os.sched_getaffinity(0)
    cpu = _current_cpu()
    after = _cpu_after_moving_off(cpu)
    assert os.sched_getaffinity(0) == allowed  # restored at once
    if len(allowed) > 1:
        assert after != cpu and after in allowed
    else:  # nowhere else to go
        assert after == cpu


@pytest.mark.parametrize("seq_len, batch, hidden, training, expected", [
    (1, 64, 128, True, False), (3, 4, 128, True, False), (4, 4, 128, True, True),  # training below hidden 256
    (7, 1, 512, True, False), (8, 1, 512, True, True), (15, 4, 256, True, False), (16, 2, 1024, True, True),
    (7, 5, 256, True, False), (8, 16, 512, True, True), (3, 32, 256, True, False), (4, 17, 256, True, True),
    (1, 33, 256, True, True),  # training from hidden 256
    (1, 4, 256, False, False),  # LSTMCell's steps in inference and the shortest sequences never pack
    (3, 64, 1024, False, False), (4, 16, 1024, False, True), (4, 1, 20, True, True),
    (3, 1, 20, False, False), (4, 1, 20, False, True), (2, 2, 20, False, False), (3, 2, 20, False, True),
    (9, 1, 512, False, False), (10, 1, 512, False, True), (22, 3, 1024, False, False),
    (23, 3, 1024, False, True), (19, 4, 512, False, False), (20, 5, 512, False, True), (1, 4, 20, False, False),
    (2, 4, 20, False, True), (5, 8, 256, False, False), (6, 12, 256, False, True), (14, 8, 1024, False, False),
    (15, 8, 1024, False, True), (4, 13, 1024, False, True), (4, 8, 1024, True, False),
])
def test_weights_are_packed_where_it_was_measured_to_pay(seq_len, batch, hidden, training, expected):
    assert packed.packs_weights(seq_len, batch, 4 * hidden * hidden, training) == expected


def test_blas_is_set_to_one_thread_only_around_forwards_that_call_it():
    """Threads that split the batch on packed weights project their own inputs (up to
    PROJECT_BY_BATCH_MAX_INPUT features) and call no BLAS: no guard; nor, on AVX-512, do threads that
    project the inputs with one packed w_ih; every other parallel forward (BLAS input projections,
    a projection after the cell, plain weights) keeps it, but for calls of up to LOOPS_MAX_ROWS (time,
    batch) rows, whose plain products are loops."""
    from nblstm import engine
    from nblstm.api import LSTM
    from nblstm.kernels.blas import LOOPS_MAX_ROWS
    from nblstm.kernels.cpu_forward import PROJECT_BY_BATCH_MAX_INPUT

    def calls_blas(plan, *args, rows=64, **kwargs):
        model = LSTM(*args, **kwargs)
        c = model.config
        weights = [engine._layer_weights(engine.CPU, model._parameters, c, layer, direction)
                   for layer in range(c.num_layers) for direction in range(c.num_directions)]
        return engine.CPU.forward_calls_blas(plan, weights, rows)

    by_batch, units = (2, True, True, True), (2, True, False, True)
    blas_projects = TILE_ROWS == 1  # else the packed product projects every input (``projects_packed``)
    assert not calls_blas(by_batch, PROJECT_BY_BATCH_MAX_INPUT, 40)
    assert calls_blas(by_batch, PROJECT_BY_BATCH_MAX_INPUT + 1, 40) == blas_projects
    assert calls_blas(by_batch, 32, 40, proj_size=20)
    assert calls_blas(by_batch, 32, PROJECT_BY_BATCH_MAX_INPUT // 2 + 1, num_layers=2,
                      bidirectional=True) == blas_projects
    assert not calls_blas(by_batch, 32, 20, num_layers=2, bidirectional=True)
    assert calls_blas(units, PROJECT_BY_BATCH_MAX_INPUT, 40) == blas_projects
    assert calls_blas(units, 32, 40, proj_size=20)
    assert calls_blas((2, True, True, False), PROJECT_BY_BATCH_MAX_INPUT, 40)
    for plan in (units, (2, True, False, False)):
        assert calls_blas(plan, 32, 40, proj_size=20, rows=LOOPS_MAX_ROWS + 1)
        assert not calls_blas(plan, 32, 40, proj_size=20, rows=LOOPS_MAX_ROWS)
    assert engine.CPU.guard(by_batch, False) is engine.CPU.guard((1, False, False, True))


@pytest.mark.parametrize("seq_len, batch, input_size, hidden, guarded", [
    (600, 1, 32, 64, True),  # products of 600 x 256 x 64 multiply-adds: BLAS would run them on its threads
    (10, 1, 20, 20, False),  # the toy case: products far below BLAS_THREADS_MIN_WORK, no guard to pay for
])
def test_one_thread_calls_keep_blas_on_one_thread_where_it_would_start_its_own(
        monkeypatch, seq_len, batch, input_size, hidden, guarded):
    """Inside a call that runs on one thread, BLAS is still set to one thread where a product is large
    enough for BLAS to start its own (``BLAS_THREADS_MIN_WORK``): those would wait for cores held by
    threads spinning after an earlier parallel region (measured: 1.5 -> 4 ms); small calls skip it."""
    from nblstm import engine
    from nblstm.api import LSTM

    entered = []

    class Recording:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc_info):
            pass

    monkeypatch.setattr(engine, "single_threaded_blas", Recording)
    model = LSTM(input_size, hidden, seed=0)
    x = np.random.default_rng(0).standard_normal((seq_len, batch, input_size)).astype(np.float32)
    assert engine.CPU.plan(seq_len, batch, hidden, hidden, True)[0] == 1
    assert (engine.largest_product(model.config, seq_len, batch) >= engine.BLAS_THREADS_MIN_WORK) == guarded
    output, _ = model(x)
    model.backward(np.ones_like(output))
    assert bool(entered) == guarded


def test_short_inference_calls_split_the_units_and_longer_ones_the_batch():
    """Measured on 2 cores: at hidden 256, batch 8, splitting the units beats splitting the batch
    up to about 10 steps in inference, at batch 16 for one step; at hidden 192, batch 8, up to 2
    steps; at hidden 128 the batch split wins from one step of batch 16.  Training keeps the batch
    split.  Inference that splits the batch packs the weights even for one step."""
    from nblstm import engine

    short = engine.CPU.plan(4, 8, 256, 256, False)
    if short[0] == 1 or not short[1]:
        pytest.skip("needs two threads and Numba's OpenMP layer")
    assert not short[2]
    assert engine.CPU.plan(4, 8, 256, 256, True)[2]
    assert engine.CPU.plan(20, 8, 256, 256, False)[2]
    assert not engine.CPU.plan(10, 8, 256, 256, False)[2]
    assert engine.CPU.plan(2, 16, 256, 256, False)[2] and not engine.CPU.plan(1, 16, 256, 256, False)[2]
    assert not engine.CPU.plan(2, 8, 192, 192, False)[2] and engine.CPU.plan(4, 8, 192, 192, False)[2]
    assert engine.CPU.plan(1, 16, 128, 128, False)[2:] == (True, True)
    assert engine.CPU.plan(1, 16, 128, 128, True)[2:] == (True, False)


def test_calls_with_steps_too_small_to_split_split_a_large_enough_batch():
    """Steps under PARALLEL_MIN_WORK run on one thread, but an inference call of at least
    SMALL_STEPS_BATCH_SPLIT_MIN_WORK multiply-adds splits its batch, where every thread gets a
    register tile of rows and projects its own inputs; short calls, batch 4 and input 128 do not.
    Training splits from TRAINING_BATCH_SPLIT_MIN_WORK, whatever the input.  The thread settings then
    key the prepared forward from batch 8."""
    import numba

    from nblstm import engine

    if numba.get_num_threads() < 2:
        pytest.skip("needs two threads")
    def splits_batch(*args, **kwargs):
        n_parts, _, by_batch, pack_weights = engine.CPU.plan(*args, **kwargs)
        assert n_parts == 1 or (by_batch and pack_weights and args[1] >= 4 * n_parts), (args, n_parts)
        return n_parts > 1

    assert not engine.splits_steps(100, 8, 32, 32, near=True)
    assert splits_batch(100, 8, 32, 32, False, input_size=32)
    assert splits_batch(100, 8, 16, 16, False, input_size=32)  # one panel of units
    assert splits_batch(10, 16, 32, 32, False, input_size=32)
    assert not splits_batch(10, 8, 32, 32, False, input_size=32)  # 655K multiply-adds
    assert not splits_batch(100, 4, 32, 32, False, input_size=32)
    assert not splits_batch(100, 8, 32, 32, False, input_size=128)
    assert splits_batch(10, 8, 32, 32, True, input_size=32)  # 655K
    assert splits_batch(100, 64, 16, 16, True, input_size=32)
    assert splits_batch(10, 16, 32, 32, True, input_size=256)
    assert not splits_batch(3, 8, 32, 32, True, input_size=32)  # 197K
    assert not splits_batch(100, 4, 32, 32, True, input_size=32)
    assert engine.CPU.plan_settings(8, 32, 32) and engine.CPU.plan_settings(4, 32, 32) == ()


def test_one_step_inference_from_no_state_splits_the_batch_or_runs_on_one_thread():
    """A one-step inference call from zero states never reads w_hh: its threads split the batch
    whatever the recurrent weights, or one thread runs it when its inputs are few; with a state, in
    training or over two steps, the weights decide."""
    from nblstm import engine

    with_state = engine.CPU.plan(1, 8, 512, 512, False)
    if with_state[0] == 1 or not with_state[1]:
        pytest.skip("needs two threads and Numba's OpenMP layer")
    assert not with_state[2]
    assert engine.CPU.plan(1, 8, 512, 512, False, zero_start=True, input_size=32)[2:] == (True, True)
    assert not engine.CPU.plan(2, 8, 512, 512, False, zero_start=True, input_size=32)[2]
    assert not engine.CPU.plan(1, 8, 512, 512, True, zero_start=True, input_size=32)[2]
    # a register tile per thread at least
    assert not engine.CPU.plan(1, 4, 512, 512, False, zero_start=True, input_size=32)[2]
    assert engine.CPU.plan(1, 16, 128, 128, False, zero_start=True, input_size=32)[0] == 1
    assert engine.CPU.plan(1, 16, 128, 128, False, zero_start=True, input_size=64)[2]
    assert engine.CPU.plan(1, 16, 128, 128, False)[2]


def test_gates_are_padded_to_panels_only_where_threads_split_the_units():
    """Threads that split the hidden units each own whole panels; threads that split the batch run
    every unit, where panel padding would only add work (hidden 32, float32: 128 columns, not 256)."""
    from nblstm import engine

    width = packed.panel_width(np.float32)
    assert engine.CPU.gate_columns(32, np.float32, (2, True, True, True)) == 4 * 32
    assert engine.CPU.gate_columns(32, np.float32, (2, True, False, True)) == 4 * width
    assert engine.CPU.gate_columns(32, np.float32, (1, False, False, True)) == 4 * 32
    assert engine.CPU.gate_columns(20, np.float32, (2, True, False, False)) == 4 * 20  # no packing: no padding


def _gate_columns(d_gates, hidden, padded):
    """(rows, 4*padded) d_gates -> its (rows, 4*hidden) columns of weight rows (padding dropped)."""
    return np.concatenate([d_gates[:, gate * padded:gate * padded + hidden] for gate in range(4)],
                          axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inputs_size", [5, 63, 64, 100])
@pytest.mark.parametrize("rows", [0, 7, 300])
@pytest.mark.parametrize("n_parts", [1, 2])
def test_add_weight_gradient_matches_numpy(dtype, inputs_size, rows, n_parts, rng):
    """dw = d_gates.T @ inputs + beta * dw, padding columns of d_gates dropped: under a panel of inputs
    and from TRANSPOSED_GRADIENT_MIN_ROWS rows as inputs.T @ d_gates added transposed, else directly;
    beta 0 overwrites NaN, beta 1 adds."""
    from nblstm.kernels.cpu_backward import add_weight_gradient

    hidden, padded = 20, 32  # 4 * 32 = 128 gate columns, two panels of float32
    d_gates = rng.standard_normal((rows, 4 * padded)).astype(dtype)
    d_gates.reshape(rows, 4, padded)[:, :, hidden:] = 0.0
    inputs = rng.standard_normal((rows, inputs_size)).astype(dtype)
    gradient = _gate_columns(d_gates, hidden, padded).T @ inputs
    dw = np.full((4 * hidden, inputs_size), np.nan, dtype)
    add_weight_gradient(d_gates, inputs, dw, 0.0, n_parts)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw, gradient, rtol=tolerance, atol=tolerance * max(rows, 1))
    add_weight_gradient(d_gates, inputs, dw, 1.0, n_parts)
    np.testing.assert_allclose(dw, 2 * gradient, rtol=tolerance, atol=tolerance * max(rows, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,padded", [(20, 32), (64, 64), (70, 128)])
@pytest.mark.parametrize("inputs_size,state", [(5, 20), (64, 64), (100, 70), (130, 128)])
@pytest.mark.parametrize("seq_len,batch", [(7, 1), (75, 4), (100, 6)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n_parts", [1, 2])
def test_add_weight_gradients_match_numpy(dtype, hidden, padded, inputs_size, state, seq_len, batch, reverse,
                                          n_parts, rng):
    """dw_ih = d_gates.T @ x, dw_hh = d_gates.T @ (each row's previous state: h0's for the first step, else
    the output row a step earlier in the direction's order), padding columns dropped; from
    PACKED_GRADIENT_MIN_ROWS rows on AVX-512 over packed blocks (whole and partial blocks, whole panels
    and the columns past them), else as before; beta 0 overwrites NaN, beta 1 adds."""
    from nblstm.kernels.cpu_backward import PACKED_GRADIENT_MIN_ROWS, add_weight_gradients, packs_gradients

    rows = seq_len * batch
    assert packs_gradients(rows) == (TILE_ROWS > 1 and rows >= PACKED_GRADIENT_MIN_ROWS)
    d_gates = rng.standard_normal((rows, 4 * padded)).astype(dtype)
    d_gates.reshape(rows, 4, padded)[:, :, hidden:] = 0.0
    x = rng.standard_normal((rows, inputs_size)).astype(dtype)
    out = rng.standard_normal((rows, state + 3)).astype(dtype)  # the outputs in columns 1..state
    h_seq, h0 = out[:, 1:1 + state], rng.standard_normal((batch, state)).astype(dtype)
    h_prev = np.concatenate([h_seq[batch:], h0]) if reverse else np.concatenate([h0, h_seq[:-batch]])
    columns = _gate_columns(d_gates.astype(np.float64), hidden, padded)
    dw_ih, dw_hh = np.full((4 * hidden, inputs_size), np.nan, dtype), np.full((4 * hidden, state), np.nan, dtype)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    for beta in (0.0, 1.0):
        add_weight_gradients(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts)
        np.testing.assert_allclose(dw_ih, (1 + beta) * columns.T @ x, rtol=tolerance, atol=tolerance * rows)
        np.testing.assert_allclose(dw_hh, (1 + beta) * columns.T @ h_prev, rtol=tolerance, atol=tolerance * rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,padded", [(20, 32), (70, 128)])
@pytest.mark.parametrize("inputs_size", [5, 64, 100])
@pytest.mark.parametrize("rows", [7, 300])
@pytest.mark.parametrize("n_parts", [1, 2])
def test_add_input_gradient_matches_numpy(dtype, hidden, padded, inputs_size, rows, n_parts, rng):
    """dx = d_gates @ w_ih (+ dx), the padded gate layout against w_ih's rows: on packed w_ih from
    PACKED_GRADIENT_MIN_ROWS rows on AVX-512 (whole panels, the columns past them as a plain product)."""
    from nblstm.kernels.cpu_backward import add_input_gradient

    d_gates = rng.standard_normal((rows, 4 * padded)).astype(dtype)
    d_gates.reshape(rows, 4, padded)[:, :, hidden:] = 0.0
    w_ih = rng.standard_normal((4 * hidden, inputs_size)).astype(dtype)
    expected = _gate_columns(d_gates.astype(np.float64), hidden, padded) @ w_ih
    dx = np.full((rows, inputs_size), np.nan, dtype)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    for beta in (0.0, 1.0):
        add_input_gradient(d_gates, w_ih, dx, beta, n_parts)
        np.testing.assert_allclose(dx, (1 + beta) * expected, rtol=tolerance, atol=tolerance * 4 * hidden)
