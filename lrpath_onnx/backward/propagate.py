"""Relevance from a start tensor down to the input, layer by layer, in reverse topological order.

Relevance lives in a dict keyed by tensor name; a tensor read by several layers (a
residual branch) collects the sum of what each sends back. Every step is checked for NaN
and infinity, so a broken explanation names the layer where it broke instead of being
written out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import NumericalError
from ..graph.layers import LayerGraph
from ..ops.registry import BackwardContext
from ..plan.planner import Plan
from .vanishing import quiet_negatives


@dataclass
class LayerFlow:
    """Total relevance entering (at the output) and leaving (at the inputs) one layer, per sample."""

    name: str
    op: str
    rule: str
    relevance_out: np.ndarray
    relevance_in: np.ndarray


@dataclass
class Propagation:
    """Result of one backward pass over a batch."""

    input_relevance: np.ndarray
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    flows: list[LayerFlow] = field(default_factory=list)
    #: seconds each layer's step took (host time: a GPU backend's kernels run asynchronously)
    seconds: dict[str, float] = field(default_factory=dict)


def session_needs(graph: LayerGraph, plan: Plan) -> dict[str, set[str]]:
    """Layer name → the tensors its step reads from the session: what its handler ``needs``,
    or, where the layer's relevance vanishes behind its ReLU (``vanishing``), what it needs
    then (no γ sign from that ReLU: VGG16's pool inputs, 196 MB at batch 8, are no longer
    held through the backward pass; LRP-ε divides by the ReLU's output, not the layer's own).
    Worked out for explanations of the graph's output; a pass started inside the network
    computes what it lacks."""
    quiet = quiet_negatives(graph, plan, graph.output)
    out = {}
    for layer in graph.layers:
        rule, h = plan.rule_for(layer), layer.handler
        out[layer.name] = (h.needs_when_quiet if layer.name in quiet else h.needs)(layer, rule, graph.shapes)
    return out


def last_readers(graph: LayerGraph, plan: Plan) -> dict[str, tuple[str, ...]]:
    """Layer name → the forward tensors no step after it reads, in the backward order.

    A layer's step reads its own inputs and output and what it needs from the session, as a
    quiet layer (``session_needs``) or as the start of a pass inside the network (its
    handler's ``needs``: the K-path passes start there, with the forward of an explanation
    that fetched those too). The graph's input and output stay: the caller reads the logits
    after the pass."""
    seen = {graph.input, graph.output}
    after: dict[str, tuple[str, ...]] = {}
    quiet = session_needs(graph, plan)
    for layer in graph.layers:  # forward order: the last step to read a tensor is its first reader here
        needs = layer.handler.needs(layer, plan.rule_for(layer), graph.shapes)
        reads = {*layer.inputs, layer.output, *needs, *quiet[layer.name]}
        fresh = tuple(sorted(reads - seen))
        seen |= reads
        if fresh:
            after[layer.name] = fresh
    return after


def propagate(graph: LayerGraph, plan: Plan, ctx: BackwardContext, start_tensor: str,
              start: np.ndarray, keep: tuple[str, ...] = (), masks: dict | None = None,
              gradient: bool = False, checked: bool = True, on_layer=None,
              release: dict[str, tuple[str, ...]] | None = None, inject: dict | None = None) -> Propagation:
    """Run LRP from ``start`` (relevance of ``start_tensor``) to the graph input.

    Parameters
    ----------
    keep : layer names whose output relevance is returned in ``Propagation.kept``
        (``"*"`` keeps every layer).
    masks : layer name → 0/1 per output channel; the relevance arriving at that layer's
        output is multiplied by it before it goes on (only chosen neurons pass).
    gradient : propagate the true gradient instead (each handler's ``gradient`` step), for
        the gradient-based methods ``lrpath evaluate`` compares LRP with.
    checked : keep per-sample sums per layer (``Propagation.flows``) and stop on NaN/inf;
        off when the pass is written as a graph (``lrpath compile``), which has no values.
    on_layer : called with each layer before its step (the compiled graph names its nodes by it).
    release : layer name → the forward tensors to drop from ``ctx.fwd`` after its step
        (``last_readers``, which the caller computes once per plan), so the steps further down
        reuse their memory; only when the caller keeps no forward.
    inject : layer name → relevance added at that layer's output when the pass reaches it
        (as if a pass started there too). Rules are linear in the relevance once the forward
        pass is fixed, so one pass gives the sum of the passes started at each layer: the
        K-path summary heatmap, a mean over layers, costs one pass instead of one per layer.
    """
    be = ctx.backend
    inject = inject or {}
    if not gradient:
        starts = (start_tensor, *(graph.find(name).output for name in inject))
        ctx.quiet_negatives = quiet_negatives(graph, plan, starts if inject else start_tensor)

    axes = graph.batch_axes()
    unknown: set[str] = set()  # layers whose per-sample sums cannot be told (batch merged by a reshape)

    def sample_sums(name: str, x, layer=None):
        """Per-sample sums of ``x`` (relevance of tensor ``name``), wherever its batch axis is
        (attention's q/k/v split moves it behind the head axis; batch-major merges are summed
        by sizes). Where a reshape merged it in an unknown order the sums are NaN, the layer's
        flow is left out, and only the total is checked for NaN/inf here."""
        ax = axes.get(name, 0)
        if ax is None and ctx.batch == 1:  # one sample: its sum is the tensor's
            return be.sample_sums(x.reshape(1, -1))
        if ax is None:
            total = np.asarray(be.to_host(be.sample_sums(x.reshape(1, -1))), np.float64)
            if not np.isfinite(total).all():
                where = f" at layer '{layer.name}' ({layer.op})" if layer is not None else ""
                raise NumericalError(f"relevance became NaN or infinite{where}")
            return be.asarray(np.full(ctx.batch, np.nan, np.float64 if x.dtype == np.float64 else np.float32))
        x = x if ax == 0 else np.moveaxis(x, ax, 0)
        if x.shape[0] != ctx.batch:  # batch and heads merged into one axis, batch-major
            x = x.reshape(ctx.batch, -1)
        return be.sample_sums(x)

    rel: dict[str, np.ndarray] = {start_tensor: start}
    sums_of = (lambda x: sample_sums(start_tensor, x)) if checked else (lambda _: None)
    totals: dict[str, np.ndarray] = {start_tensor: sums_of(start)}  # per-sample sums of rel
    checks: list[tuple] = []  # (layer, rule, per-sample sums of its input relevance), checked at the end
    keep_all = "*" in keep
    wanted = set(keep)
    out = Propagation(input_relevance=np.zeros(0, np.float32))
    done_with = release or {}
    for layer in reversed(graph.layers):
        r = rel.pop(layer.output, None)
        r_total = totals.pop(layer.output, None)
        if layer.name in inject:
            extra = be.upload(np.asarray(inject[layer.name], start.dtype))
            extra_total = sample_sums(layer.output, extra) if checked else None
            r, r_total = (extra, extra_total) if r is None else \
                (r + extra, None if r_total is None else r_total + extra_total)
        if r is None:
            ctx.release(*done_with.get(layer.name, ()))
            continue
        if masks and layer.name in masks:
            m = np.asarray(masks[layer.name], r.dtype)
            r = r * m.reshape((1, -1) + (1,) * (r.ndim - 2))
            r_total = sample_sums(layer.output, r) if checked else None
        if keep_all or layer.name in wanted:
            out.kept[layer.name] = r
        rule = plan.rule_for(layer)
        if on_layer is not None:
            on_layer(layer)
        t_step = time.perf_counter()
        ins = layer.handler.gradient(layer, r, ctx) if gradient else layer.handler.relevance(layer, rule, r, ctx)
        total_in = None
        for name, ri in zip(layer.inputs, ins):
            if ri is None:
                continue
            # a NaN/inf anywhere makes its sample's sum non-finite; relevance passed on unchanged
            # (an activation's) has the sums it arrived with
            sums = None
            if checked:
                sums = r_total if ri is r else sample_sums(name, ri, layer)
                if ctx.batch > 1 and (axes.get(name, 0) is None or axes.get(layer.output, 0) is None):
                    unknown.add(layer.name)
                total_in = sums if total_in is None else total_in + sums
            if name in rel:
                rel[name] = rel[name] + ri
                totals[name] = sums if sums is None else totals[name] + sums
            else:
                rel[name], totals[name] = ri, sums
        if checked:
            checks.append((layer, rule, r_total, total_in))
        ctx.release(*done_with.get(layer.name, ()))
        out.seconds[layer.name] = time.perf_counter() - t_step
    for layer, rule, r_total, total_in in checks:  # one transfer at the end, not one per layer
        if layer.name in unknown:
            continue
        r_host = np.asarray(be.to_host(r_total), np.float64)
        in_host = np.zeros_like(r_host) if total_in is None else np.asarray(be.to_host(total_in), np.float64)
        if not np.isfinite(in_host).all():
            raise NumericalError(f"relevance became NaN or infinite at layer '{layer.name}' "
                                 f"({layer.op}, rule {rule})")
        out.flows.append(LayerFlow(layer.name, layer.op, str(rule), r_host, in_host))
    x = rel.pop(graph.input, None)
    if x is None:
        shape = (start.shape[0],) + tuple(d or 0 for d in graph.input_shape[1:])
        x = np.zeros(shape, start.dtype)
    out.input_relevance = be.to_host(x)
    out.kept = {k: be.to_host(v) for k, v in out.kept.items()}
    return out
