"""``load4``: four consecutive elements of a 1-D array in 16-byte vector loads (CUDA, numba).

numba loads array elements one at a time, even where four neighbours are wanted and lie
16-byte aligned, as a GEMM micro-tile's operands do in shared memory. There each 32-bit
load costs a shared-memory cycle, as many as the micro-tile's multiply-adds take, so the
tiled GEMM could not pass half the fp32 peak. ``load4(arr, i)`` returns ``arr[i:i + 4]``
as a tuple from one ``<4 x float>`` load (two ``<2 x double>`` loads in float64), which
NVVM turns into ``ld.shared.v4.f32`` / ``ld.shared.v2.f64``.

The caller guarantees alignment: ``arr`` allocated with ``alignment=16`` and ``i`` a
multiple of 4. ``arr`` must be contiguous (a strided view would be read as if it were not,
so the compiled version refuses it at typing). Under numba's simulator it is plain
indexing (the simulator runs Python) that asserts a contiguous array and an index that is
a multiple of 4, so the simulator tests catch a caller that breaks either (the array's own
address is the allocation's: ``alignment=16`` on the device, numpy's in the simulator).
"""

from __future__ import annotations

from numba import config

if config.ENABLE_CUDASIM:

    def load4(arr, i):
        assert i % 4 == 0, f"load4 at index {i}: not a multiple of 4 (16-byte alignment)"
        assert arr.ndim == 1 and arr.strides[0] == arr.itemsize, "load4 needs a contiguous 1-D array"
        return arr[i], arr[i + 1], arr[i + 2], arr[i + 3]

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def load4(typingctx, arr, i):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
                and isinstance(i, types.Integer) and arr.dtype in (types.float32, types.float64)):
            return None
        sig = types.UniTuple(arr.dtype, 4)(arr, i)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            index = context.cast(builder, args[1], signature.args[1], types.int64)
            first = builder.gep(ary.data, [index])
            element = context.get_value_type(arr.dtype)
            lanes = 4 if arr.dtype == types.float32 else 2
            vector = ir.VectorType(element, lanes)
            values = []
            for half in range(4 // lanes):
                at = builder.gep(first, [ir.Constant(ir.IntType(64), half * lanes)])
                loaded = builder.load(builder.bitcast(at, vector.as_pointer(at.type.addrspace)), align=16)
                values += [builder.extract_element(loaded, ir.Constant(ir.IntType(32), e)) for e in range(lanes)]
            return context.make_tuple(builder, signature.return_type, values)

        return sig, codegen
