"""One onnxruntime session that returns, with the logits, every tensor the backward pass reads.

The session runs a copy of the original graph (not the canonical one), so activations are
bit-for-bit what the model computes; its outputs are extended with the requested tensors
and each MaxPool gains its ``Indices`` output. Large dense weights are not copied into
onnxruntime: they become graph inputs bound once to the analyzer's own arrays, so VGG16's
470 MB of classifier weights live in memory once.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, ModelError, first_line
from ..graph.layers import LayerGraph
from ..graph.loader import LoadedModel
from ..ops import handler_for
from . import ordered_session


#: onnxruntime's own log line for a failed run is not printed: the failure becomes one
#: ``InputError`` line, or (shapes foreseen wrongly, as a ViT's sequence-first attention
#: tensors are) a second run that succeeds
QUIET_RUN = ort.RunOptions()
QUIET_RUN.log_severity_level = 4

#: weights with at least this many elements are shared with onnxruntime, not copied (the
#: ops whose handler names a ``shared_weight_input``: dense layers. Not Conv: a shared conv
#: weight cannot be re-laid out by onnxruntime; measured on VGG16: its forward +10 %, for −140 MB)
SHARE_ELEMENTS = 1 << 20

#: a batch whose fetched tensors exceed this much runs through onnxruntime in slices of
#: samples, written into the same output arrays: onnxruntime's scratch and the tensors fetched
#: only to derive others are then sized by the slice, not the batch (efficientnet-lite0, 50 MB
#: fetched per sample: slices of 2; see ``ActivationRuntime._sliceable``)
SLICE_BYTES = 128 << 20


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver can be loaded (the GPU build of onnxruntime needs it)."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def choose_providers(device: str) -> list[str]:
    """Execution providers to ask for: CUDA first where wanted and usable, CPU always."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    usable = "CUDAExecutionProvider" in available and cuda_driver_present()
    if device == "cuda" and not usable:
        raise InputError("--device cuda: onnxruntime has no usable CUDA execution provider here "
                         "(no NVIDIA driver or a CPU-only onnxruntime); use --device cpu or auto")
    return (["CUDAExecutionProvider"] if usable else []) + ["CPUExecutionProvider"]


def release_model_bytes(session: ort.InferenceSession) -> None:
    """Let go of the serialized model a session made from bytes keeps for re-creating itself.

    onnxruntime's Python session holds those bytes for its whole life, only to rebuild the
    session on another provider after an execution-provider failure; on the CPU there is no
    such fallback, and VGG16's copy (its convolution weights) is 56 MB the heap could reuse.
    The fallback is switched off with them, so nothing can ask for the bytes again."""
    if getattr(session, "_model_bytes", None) is not None:
        session.disable_fallback()
        session._model_bytes = None


def add_switch_outputs(proto: onnx.ModelProto, graph: LayerGraph, requests: set[str]) -> set[str]:
    """Give the nodes the secondary outputs the handlers want among ``requests`` (MaxPool's
    ``Indices``: its switches); the integer-typed outputs of the handlers."""
    added: dict[str, str] = {}
    int_outputs: set[str] = set()
    for layer in graph.layers:
        extra, ints = layer.handler.session_outputs(layer)
        added.update({k: v for k, v in extra.items() if v in requests})
        int_outputs |= ints
    for node in proto.graph.node:
        if node.output and node.output[0] in added:
            if len(node.output) == 1:
                node.output.append(added[node.output[0]])
            else:
                node.output[1] = added[node.output[0]]
    return int_outputs


def _declared_dims(graph: LayerGraph, name: str) -> list | None:
    """The shape an added output is declared with: the graph's, batch left open, where every
    other dim is known; else none. An output of unknown shape hides its shape from
    onnxruntime's fusions (MatMul + Add into Gemm needs it): the session would then compute
    another forward than the model's own, one rounding apart (vgg16-mri's dense layers)."""
    shape = graph.shapes.get(name)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return None
    return [None] + list(shape[1:])


def _shared_weights(model: LoadedModel) -> set[str]:
    """Big initializers read only as the weight operand of dense layers."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in model.proto.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    out = set()
    for name in model.stubbed:
        arr = model.initializers[name]
        if arr.size < SHARE_ELEMENTS or arr.dtype != np.float32:
            continue
        if all(_shares(op, i) for op, i in uses.get(name, [])):
            out.add(name)
    return out


def _shares(op: str, i: int) -> bool:
    h = handler_for(op)
    return h is not None and h.shared_weight_input == i


class ActivationRuntime:
    """An onnxruntime session returning the explained output plus ``requests``.

    Parameters
    ----------
    model : the loaded model (structure + weights).
    graph : its canonical layer graph (for the output name and MaxPool layers).
    requests : tensor names the backward pass needs (inputs, outputs, switches).
    device : ``cpu``, ``cuda`` or ``auto`` for the execution provider.
    extra_nodes, extra_initializers : nodes appended to the graph (rule forward terms).
    extra_inputs, rewire : more graph inputs, and tensor → replacement for the existing
        nodes that read it (neuron masks inserted after layers).
    """

    def __init__(self, model: LoadedModel, graph: LayerGraph, requests: set[str],
                 device: str = "cpu", threads: int | None = None,
                 extra_nodes: list | None = None, extra_initializers: list | None = None,
                 extra_inputs: list | None = None, rewire: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.input_name = graph.input
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        g = proto.graph
        shared = _shared_weights(model)
        inits = []
        for t in g.initializer:
            if t.name in shared:
                continue
            if t.name in model.stubbed:
                inits.append(numpy_helper.from_array(np.asarray(model.initializers[t.name]), t.name))
            else:
                inits.append(t)
        del g.initializer[:]
        g.initializer.extend(inits)
        g.initializer.extend(extra_initializers or [])
        for node in g.node:  # consumers of a rewired tensor read its replacement instead
            for i, name in enumerate(node.input):
                if rewire and name in rewire:
                    node.input[i] = rewire[name]
        g.node.extend(extra_nodes or [])
        g.input.extend(extra_inputs or [])
        for name in sorted(shared):
            arr = model.initializers[name]
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
        #: tensors computed from a fetched one after each run (MaxPool switches), not asked of
        #: onnxruntime; from what the node now reads where its input was rewired
        self.derived = {name: ((rewire or {}).get(src, src), derive) for layer in graph.layers
                        for name, (src, derive) in layer.handler.derived_outputs(layer).items() if name in requests}
        sources = {src for src, _ in self.derived.values()}
        fetched = (set(requests) - set(self.derived)) | sources
        self._dropped = sources - set(requests) - {graph.output, graph.input}  # fetched only to derive from
        int_outputs = add_switch_outputs(proto, graph, fetched)
        existing = [o.name for o in g.output]
        self.output_names = [graph.output] + sorted(r for r in fetched if r not in (graph.output, graph.input))
        del g.output[:]
        for name in self.output_names:
            dtype = TensorProto.INT64 if name in int_outputs else TensorProto.FLOAT
            g.output.append(helper.make_tensor_value_info(name, dtype, _declared_dims(graph, name)))
        del g.value_info[:]  # stale shapes of renamed/extended outputs must not constrain ORT
        self.original_outputs = existing
        self._int_outputs = int_outputs
        providers = choose_providers(device)
        data = proto.SerializeToString()
        del proto, g, inits
        try:
            self.session = ordered_session.inference_session(data, threads, providers)
        except Exception:  # declared output shapes onnxruntime disagrees with: leave them open
            proto = onnx.ModelProto.FromString(data)
            for out in proto.graph.output:
                out.type.tensor_type.ClearField("shape")
            data = proto.SerializeToString()
            del proto
            try:
                self.session = ordered_session.inference_session(data, threads, providers)
            except Exception as exc:
                msg = first_line(exc)
                raise ModelError(f"onnxruntime cannot run {model.path.name}: {msg}") from None
        del data
        self.provider = self.session.get_providers()[0]
        if self.provider == "CPUExecutionProvider":
            release_model_bytes(self.session)
        self._binding_values = {name: ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(model.initializers[name])) for name in sorted(shared)}
        self._shapes: dict[tuple, dict[str, tuple]] = {}
        #: weights every run reads from memory again: the large dense ones bound as inputs
        self._streamed_bytes = sum(v.nbytes for v in (model.initializers[n] for n in shared))
        self._unsliced: set[tuple] = set()  # input shapes whose slices onnxruntime refused
        #: the conditions of ``_sliceable`` no batch changes: on the CPU, no MaxPool Indices of the
        #: model's own (each run would number them from its first sample), the batch axis open
        self._may_slice = (self.provider == "CPUExecutionProvider" and not int_outputs & set(self.output_names)
                           and graph.input_shape[:1] == (None,))

    def run(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Forward ``x`` (the model's input layout, with batch axis); tensors by name.

        Outputs are written by onnxruntime straight into fresh numpy arrays, which saves a
        copy of every requested activation (on VGG16 at batch 8, 1.3 s of 3.0 for a copied
        first run). Their shapes come from an earlier run of this input shape, else of
        another batch size, else from the graph's static shapes; outputs whose shape cannot
        be foreseen are copied out, and a wrong guess (onnxruntime refuses the buffer) runs
        again with every output copied. A batch whose fetched tensors are large runs in
        slices of samples (``slice_size``).
        """
        x = np.ascontiguousarray(x, np.float32)
        known = self._shapes.get(x.shape)
        planned = known or self._foresee(x.shape)
        if self._sliceable(x.shape, planned, extra):
            try:
                outs = self._run_in_slices(x, planned, self.slice_size(planned))
            except InputError:  # onnxruntime refused a slice's shapes: run the batch whole
                self._unsliced.add(x.shape)
            else:
                self._shapes[x.shape] = planned
                return outs
        try:
            outs = self._run(x, extra, planned)
        except InputError:
            if known or not planned:
                raise
            outs = self._run(x, extra, {})
        if known is None:
            self._shapes[x.shape] = {n: (a.shape, a.dtype) for n, a in outs.items()}
        return self._finish(x, outs)

    @staticmethod
    def _per_sample(planned: dict[str, tuple]) -> int:
        return sum(int(np.prod(shape[1:])) * np.dtype(dt).itemsize for shape, dt in planned.values())

    @classmethod
    def slice_size(cls, planned: dict[str, tuple]) -> int:
        """Samples per onnxruntime run: as many as keep the fetched tensors within
        ``SLICE_BYTES``, at least two. onnxruntime's scratch memory (its blocked NCHWc copies
        of every activation) grows with the samples per run, its convolutions' speed per
        sample barely (efficientnet-lite0 at batch 8 in slices of 2: its forward the same or
        faster, peak RSS 30–70 MB lower)."""
        return max(2, SLICE_BYTES // max(cls._per_sample(planned), 1))

    def _sliceable(self, shape: tuple, planned: dict[str, tuple], extra) -> bool:
        """Whether a batch of ``shape`` runs in slices: on the CPU (a GPU wants whole batches),
        no MaxPool ``Indices`` of the model's own among the outputs (each run would number them
        from its own first sample), a batch axis left open by the model (its samples assumed
        independent, as the backward pass assumes), every output's shape foreseen and
        batch-first, no extra inputs, large enough, and the large dense weights smaller than a
        sample's fetched tensors: each run streams them again (VGG16's 470 MB in slices of 2:
        its forward at batch 8 10 % slower), where one sample less of scratch is what a slice
        saves."""
        n = shape[0]
        return (self._may_slice and extra is None and shape not in self._unsliced
                and len(planned) == len(self.output_names) and all(s[:1] == (n,) for s, _ in planned.values())
                and self.slice_size(planned) < n and self._streamed_bytes < self._per_sample(planned))

    def _finish(self, x: np.ndarray, outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The session's outputs plus the derived tensors, less those fetched only to derive them."""
        for name, (src, derive) in self.derived.items():
            outs[name] = derive(x if src == self.input_name else outs[src])
        for name in self._dropped:
            del outs[name]
        return outs

    def _run_in_slices(self, x: np.ndarray, planned: dict[str, tuple], step: int) -> dict[str, np.ndarray]:
        """``x`` through onnxruntime ``step`` samples at a time, each run writing into its slice
        of the batch's output arrays; tensors fetched only to derive others go to one buffer of
        ``step`` samples, reused, and are derived from slice by slice."""
        n = x.shape[0]
        outs = {k: np.empty(*planned[k]) for k in self.output_names if k not in self._dropped}
        scratch = {k: np.empty((step,) + planned[k][0][1:], planned[k][1]) for k in self._dropped}
        derived: dict[str, np.ndarray] = {}
        for i in range(0, n, step):
            m = min(step, n - i)
            part = {k: v[i:i + m] for k, v in outs.items()} | {k: v[:m] for k, v in scratch.items()}
            self._execute(x[i:i + m], None, part)
            for name, (src, derive) in self.derived.items():
                r = derive(x[i:i + m] if src == self.input_name else part[src], i)
                if name not in derived:
                    derived[name] = np.empty((n,) + r.shape[1:], r.dtype)
                derived[name][i:i + m] = r
        return outs | derived

    def _run(self, x, extra, planned: dict[str, tuple]) -> dict[str, np.ndarray]:
        return self._execute(x, extra, {name: np.empty(*planned[name]) for name in self.output_names
                                        if name in planned})

    def _execute(self, x, extra, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime run writing into ``arrays`` (C-contiguous); outputs not among them
        are copied out."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name, value in self._binding_values.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in (extra or {}).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value, np.float32))
        outs = {}
        for name in self.output_names:
            if name in arrays:
                arr = outs[name] = arrays[name]
                binding.bind_output(name, "cpu", element_type=arr.dtype, shape=arr.shape,
                                    buffer_ptr=arr.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(binding, QUIET_RUN)
        except Exception as exc:
            msg = first_line(exc)
            raise InputError(f"onnxruntime failed on this input: {msg}") from None
        if len(outs) < len(self.output_names):
            for name, value in zip(self.output_names, binding.get_outputs()):
                if name not in outs:
                    outs[name] = value.numpy()
        return outs

    def _foresee(self, shape: tuple) -> dict[str, tuple]:
        """Output (shape, dtype) for an input of ``shape`` never run before: batch-first
        outputs scaled from a run of another batch size, else fully known static shapes."""
        n = shape[0]
        for seen, outs in self._shapes.items():
            if seen[1:] == shape[1:] and all(s and s[0] == seen[0] for s, _ in outs.values()):
                return {k: ((n,) + s[1:], dt) for k, (s, dt) in outs.items()}
        static = self.graph.shapes if shape[1:] == tuple(self.graph.input_shape[1:]) else {}
        out = {}
        for name in self.output_names:
            s = static.get(name)
            if s and all(d is not None for d in s[1:]) and name not in self._int_outputs:
                out[name] = ((n,) + tuple(s[1:]), np.dtype(np.float32))
        return out

def default_threads() -> int | None:
    """Threads for onnxruntime: ``LRPATH_THREADS`` if set, else its own default."""
    v = os.environ.get("LRPATH_THREADS")
    return int(v) if v and v.isdigit() else None
