"""Tensors that write ONNX nodes instead of holding numbers, so the relevance handlers emit a graph.

The handlers and rules are written with numpy operations on whatever arrays their backend
gives them (the CUDA backend's ``DeviceArray`` is one such array). ``Sym`` is another: each
operation on it appends the ONNX node that computes it to a ``Builder`` and returns the
``Sym`` of the node's output. Running the ordinary backward pass on ``Sym`` forward tensors
therefore writes the relevance pass as a graph, rule by rule exactly as explain computes it.

Shapes are traced with a batch of one. A tensor knows where the model's batch sits: its
axis ``bax``, alone there or merged with neighbours (``bsplit``: the traced axis is
``pre · N · post`` at run time, as attention's batch × heads). Reshapes write ``-1`` where the
batch goes, so the compiled model takes any batch size. Data-dependent branches in the
handlers (``signal.any()``) are taken as true: the graph computes every term, which for an
absent term adds exact zeros.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError

_ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
              np.dtype(np.bool_): TensorProto.BOOL}


class Builder:
    """Collects the nodes and initializers of the relevance pass, with unique names."""

    def __init__(self, taken: set[str], prefix: str = "lrp") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken)
        self._consts: dict[int, tuple[np.ndarray, str]] = {}
        self.prefix = prefix
        self.scope = ""
        self._sources: list[tuple[str, np.ndarray]] = []

    def share(self, name: str, arr: np.ndarray) -> None:
        """Let a model initializer serve wherever its array (or its transpose) is an operand."""
        self._sources.append((name, arr))

    def find(self, arr: np.ndarray) -> tuple[str, bool] | None:
        """(initializer name, whether ``arr`` is its transpose) for a shared array, else None."""
        for name, src in self._sources:
            if arr is src:
                return name, False
            if src.ndim == 2 and np.shares_memory(arr, src) and arr.shape == src.T.shape \
                    and arr.strides == src.T.strides:
                return name, True
        return None

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}/{self.scope}/{hint}" if self.scope else f"{self.prefix}/{hint}"
        name, i = base, 1
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, outputs: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(hint or op) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initializer holding ``value`` (the same array object is stored once)."""
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        hit = self._consts.get(id(arr))
        if hit is not None and hit[0] is arr:
            return hit[1]
        shared = self.find(arr) if arr.ndim else None
        if shared is not None and not shared[1]:
            return shared[0]
        data = np.ascontiguousarray(arr, dtype if arr.dtype.kind in "fb" or dtype == np.int64 else arr.dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(data, name))
        self._consts[id(arr)] = (arr, name)
        return name

    def ints(self, values, hint: str = "shape") -> str:
        return self.const(np.asarray(list(values), np.int64), hint, np.int64)


def _unsupported(what: str) -> InputError:
    return InputError(f"compile: {what} cannot be written as ONNX yet")


class Sym:
    """A tensor of the compiled graph, with the numpy surface the handlers use."""

    __array_priority__ = 200

    def __init__(self, builder: Builder, name: str, shape: tuple, dtype=np.float32, batched: bool = True,
                 bax: int = 0, bsplit: tuple[int, int] = (1, 1)) -> None:
        self.b = builder
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.bax = bax if batched and len(self.shape) > 0 else None
        self.bsplit = bsplit

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    batched = property(lambda self: self.bax is not None)

    def __repr__(self) -> str:
        return f"Sym({self.name!r}, shape={self.shape}, bax={self.bax})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a compiled tensor has no values; the operation needs an ONNX form")

    def __bool__(self):
        raise TypeError("a compiled tensor has no truth value")

    def _new(self, name: str, shape, dtype=None, batched=None, bax=None, bsplit=None) -> "Sym":
        """A Sym like this one: the batch where it was, unless told otherwise."""
        batched = self.batched if batched is None else batched
        return Sym(self.b, name, shape, self.dtype if dtype is None else dtype, batched,
                   self.bax if bax is None else bax, self.bsplit if bsplit is None else bsplit)

    def _flat_batch(self) -> tuple[int, int]:
        """(elements before, elements after) the batch in row-major order, per batch item."""
        pre, post = self.bsplit
        return int(np.prod(self.shape[:self.bax])) * pre, post * int(np.prod(self.shape[self.bax + 1:]))

    # -- operands ---------------------------------------------------------------------
    def operand(self, x) -> tuple[str, tuple, bool]:
        """(tensor name, shape, batched) of a Sym, a numpy array or a scalar."""
        if isinstance(x, Sym):
            return x.name, x.shape, x.batched
        arr = np.asarray(x)
        if arr.dtype != self.dtype and arr.dtype.kind in "fiub" and self.dtype.kind == "f":
            arr = arr.astype(self.dtype)  # numpy's scalars and constants take the tensor's type
        return self.b.const(x if isinstance(x, np.ndarray) and x.dtype == self.dtype else arr), arr.shape, False

    def _binary(self, other, op: str, reverse: bool = False) -> "Sym":
        name, shape, batched = self.operand(other)
        a, b = (name, self.name) if reverse else (self.name, name)
        out = np.broadcast_shapes(self.shape, shape)
        lead = self if self.batched else other if isinstance(other, Sym) and other.batched else None
        name = self.b.node(op, [a, b])[0]
        if lead is None:
            return self._new(name, out, batched=False)
        return self._new(name, out, batched=True, bax=lead.bax + len(out) - lead.ndim, bsplit=lead.bsplit)

    __add__ = lambda self, o: self._binary(o, "Add")
    __radd__ = lambda self, o: self._binary(o, "Add", True)
    __sub__ = lambda self, o: self._binary(o, "Sub")
    __rsub__ = lambda self, o: self._binary(o, "Sub", True)
    __mul__ = lambda self, o: self._binary(o, "Mul")
    __rmul__ = lambda self, o: self._binary(o, "Mul", True)
    __truediv__ = lambda self, o: self._binary(o, "Div")
    __rtruediv__ = lambda self, o: self._binary(o, "Div", True)

    def __pow__(self, k):
        if k == 2:
            return self * self
        return self._binary(np.asarray(k, self.dtype), "Pow")

    def __matmul__(self, other) -> "Sym":
        return _matmul(self, other)

    def __rmatmul__(self, other) -> "Sym":
        return _matmul(other, self)

    def __neg__(self) -> "Sym":
        return self.unary("Neg")

    def unary(self, op: str, **attrs) -> "Sym":
        return self._new(self.b.node(op, [self.name], **attrs)[0], self.shape)

    # -- shape ------------------------------------------------------------------------
    def reshape(self, *shape) -> "Sym":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = [int(s) for s in shape]
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape = [self.size // known if s == -1 else s for s in shape]
        if int(np.prod(shape)) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {tuple(shape)}")
        if tuple(shape) == self.shape:
            return self
        if not self.batched:
            return self._new(self.b.node("Reshape", [self.name, self.b.ints(shape)])[0], shape)
        before, after = self._flat_batch()
        for j, d in enumerate(shape):  # the output axis the batch falls in, and its neighbours there
            head, tail = int(np.prod(shape[:j])), int(np.prod(shape[j + 1:]))
            if before % head == 0 and after % tail == 0 and (before // head) * (after // tail) == d:
                target = list(shape)
                target[j] = -1  # the batch's axis: its size follows from the others
                name = self.b.node("Reshape", [self.name, self.b.ints(target)])[0]
                return self._new(name, shape, bax=j, bsplit=(before // head, after // tail))
        raise _unsupported(f"a reshape that splits the batch ({self.shape} → {tuple(shape)})")

    def transpose(self, *axes) -> "Sym":
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list, np.ndarray)) else axes
        axes = [int(a) for a in axes] if len(axes) else list(range(self.ndim))[::-1]
        name = self.b.node("Transpose", [self.name], perm=axes)[0]
        shape = tuple(self.shape[a] for a in axes)
        return self._new(name, shape, bax=axes.index(self.bax)) if self.batched else self._new(name, shape)

    def swapaxes(self, a: int, b: int) -> "Sym":
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def expand_dims(self, axis: int) -> "Sym":
        axis %= self.ndim + 1
        shape = self.shape[:axis] + (1,) + self.shape[axis:]
        name = self.b.node("Unsqueeze", [self.name, self.b.ints([axis], "axes")])[0]
        if not self.batched:
            return self._new(name, shape)
        return self._new(name, shape, bax=self.bax + (axis <= self.bax))

    @property
    def T(self) -> "Sym":
        return self.transpose()

    def contiguous(self) -> "Sym":
        return self

    def __getitem__(self, key) -> "Sym":
        key = key if isinstance(key, tuple) else (key,)
        starts, ends, axes, shape = [], [], [], list(self.shape)
        for axis, k in enumerate(key):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise _unsupported(f"indexing with {k!r}")
            lo, hi, _ = k.indices(self.shape[axis])
            if (lo, hi) == (0, self.shape[axis]):
                continue
            if self.batched and axis == self.bax:
                raise _unsupported("slicing the batch axis")
            starts.append(lo)
            ends.append(hi)
            axes.append(axis)
            shape[axis] = max(0, hi - lo)
        if not axes:
            return self
        name = self.b.node("Slice", [self.name, self.b.ints(starts), self.b.ints(ends), self.b.ints(axes)])[0]
        return self._new(name, shape)

    def astype(self, dtype, copy: bool = True) -> "Sym":
        if np.dtype(dtype) == self.dtype:
            return self
        if np.dtype(dtype).kind == "f" and self.dtype.kind == "f":
            return self  # the compiled pass runs in float32 throughout
        return self._new(self.b.node("Cast", [self.name], to=_ONNX_TYPE[np.dtype(dtype)])[0], self.shape, dtype)

    def _reduce(self, op: str, axis, keepdims: bool) -> "Sym":
        axes = list(range(self.ndim)) if axis is None else sorted(int(a) % self.ndim for a in np.atleast_1d(axis))
        shape = [1 if a in axes else d for a, d in enumerate(self.shape)] if keepdims else \
            [d for a, d in enumerate(self.shape) if a not in axes]
        name = self.b.node(op, [self.name, self.b.ints(axes, "axes")], keepdims=int(keepdims))[0]
        if not self.batched or self.bax in axes:
            return self._new(name, shape, batched=False)
        return self._new(name, shape, bax=self.bax - (0 if keepdims else sum(a < self.bax for a in axes)))

    def sum(self, axis=None, dtype=None, keepdims: bool = False) -> "Sym":
        return self._reduce("ReduceSum", axis, keepdims)

    def mean(self, axis=None, dtype=None, keepdims: bool = False) -> "Sym":
        """A sum times 1/count (ReduceMean takes its axes as an input only from opset 18 on)."""
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        count = int(np.prod([self.shape[int(a)] for a in axes]))
        return self._reduce("ReduceSum", axis, keepdims) * np.float32(1.0 / count)

    def any(self) -> bool:
        return True  # the graph computes the term; where it is absent it adds zeros

    # -- numpy protocols --------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs.get("out") is not None:
            return NotImplemented
        if ufunc is np.matmul and len(inputs) == 2:
            return _matmul(*inputs)
        if ufunc in _UNARY and len(inputs) == 1:
            return inputs[0].unary(_UNARY[ufunc])
        if ufunc in _BINARY and len(inputs) == 2:
            a, b = inputs
            if isinstance(a, Sym):
                return a._binary(b, _BINARY[ufunc])
            return b._binary(a, _BINARY[ufunc], reverse=True)
        return NotImplemented

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        if impl is None:
            raise _unsupported(f"numpy.{func.__name__}")
        return impl(*args, **kwargs)


_UNARY = {np.negative: "Neg", np.absolute: "Abs", np.sign: "Sign", np.sqrt: "Sqrt", np.exp: "Exp"}
_BINARY = {np.add: "Add", np.subtract: "Sub", np.multiply: "Mul", np.true_divide: "Div", np.divide: "Div",
           np.maximum: "Max", np.minimum: "Min"}


def _split(x: Sym, indices_or_sections, axis=0):
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sizes = [n // int(indices_or_sections)] * int(indices_or_sections)
    else:
        edges = [0] + [int(c) for c in indices_or_sections] + [n]
        sizes = [hi - lo for lo, hi in zip(edges[:-1], edges[1:])]
    if x.batched and axis % x.ndim == x.bax:
        raise _unsupported("splitting the batch axis")
    names = x.b.node("Split", [x.name, x.b.ints(sizes, "split")], outputs=len(sizes), axis=axis)
    return [x._new(nm, tuple(s if a == axis % x.ndim else d for a, d in enumerate(x.shape)))
            for nm, s in zip(names, sizes)]


def _full_like(x: Sym, value, dtype=None):
    """A tensor shaped like ``x`` (its batch included) filled with ``value``."""
    shape = x.b.node("Shape", [x.name])[0]
    fill = numpy_helper.from_array(np.asarray([value], dtype or x.dtype))
    return x._new(x.b.node("ConstantOfShape", [shape], value=fill)[0], x.shape, dtype)


def _concatenate(xs, axis=0):
    syms = [x for x in xs if isinstance(x, Sym)]
    first = syms[0]
    names = [first.operand(x)[0] for x in xs]
    shape = list(first.shape)
    shape[axis] = sum((x.shape if isinstance(x, Sym) else np.shape(x))[axis] for x in xs)
    return first._new(first.b.node("Concat", names, axis=axis)[0], shape)


def _matmul(a, b) -> Sym:
    """``a @ b`` (numpy's matmul: leading dims broadcast) as one MatMul node."""
    first = a if isinstance(a, Sym) else b
    na, sa, _ = first.operand(a)
    nb, sb, _ = first.operand(b)
    lead = np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    shape = tuple(lead) + (sa[-2], sb[-1])
    name = first.b.node("MatMul", [na, nb])[0]
    left = isinstance(a, Sym) and a.batched
    src = a if left else b if isinstance(b, Sym) and b.batched else None
    if src is None:
        return first._new(name, shape, batched=False)
    if src.bax == (src.ndim - 1 if left else src.ndim - 2):
        raise _unsupported("a product over the batch axis")
    return first._new(name, shape, batched=True, bax=src.bax + len(shape) - src.ndim, bsplit=src.bsplit)


def _pad(x: Sym, pad_width, mode="constant", **kwargs):
    """Padding as one Pad node (ONNX: all begins, then all ends); NumPy's ``reflect``, ``edge``
    and ``wrap`` are ONNX's modes of those names."""
    widths = [(int(p[0]), int(p[1])) for p in np.broadcast_to(np.asarray(pad_width), (x.ndim, 2))]
    if x.batched and widths[x.bax] != (0, 0):
        raise _unsupported("padding the batch axis")
    pads = [w[0] for w in widths] + [w[1] for w in widths]
    shape = tuple(d + a + b for d, (a, b) in zip(x.shape, widths))
    attrs = {} if mode == "constant" else {"mode": mode}
    return x._new(x.b.node("Pad", [x.name, x.b.ints(pads, "pads")], **attrs)[0], shape)


_FUNCTIONS = {
    np.split: _split,
    np.ones_like: lambda x, dtype=None: _full_like(x, 1, dtype),
    np.zeros_like: lambda x, dtype=None: _full_like(x, 0, dtype),
    np.ascontiguousarray: lambda x, dtype=None: x.astype(dtype) if dtype else x,
    np.asarray: lambda x, dtype=None: x.astype(dtype) if dtype else x,
    np.transpose: lambda x, axes=None: x.transpose(axes) if axes is not None else x.transpose(),
    np.concatenate: _concatenate,
    np.reshape: lambda x, shape: x.reshape(shape),
    np.sum: lambda x, axis=None, dtype=None, keepdims=False: x.sum(axis, dtype, keepdims),
    np.mean: lambda x, axis=None, dtype=None, keepdims=False: x.mean(axis, dtype, keepdims),
    np.matmul: _matmul,
    np.swapaxes: lambda x, a, b: x.swapaxes(a, b),
    np.expand_dims: lambda x, axis: x.expand_dims(axis),
    np.moveaxis: lambda x, source, destination: x.transpose(_moved(x.ndim, source, destination)),
    np.pad: _pad,
}


def _moved(ndim: int, source: int, destination: int) -> list[int]:
    """The permutation ``np.moveaxis(x, source, destination)`` applies."""
    order = [a for a in range(ndim) if a != source % ndim]
    order.insert(destination % ndim, source % ndim)
    return order
