"""Order onnxruntime's optimized graph so each fetched tensor is written out as soon as it exists.

On the CPU, onnxruntime runs convolutions in blocked (NCHWc) tensors and adds a
``ReorderOutput`` node, read by no other node, for each tensor the session returns. It orders
a graph by walking back from those leaves, the one with the highest node index first: that
walk reached the whole network, so every ``ReorderOutput`` ran after the last layer and each
blocked activation stayed alive to the end of the run. With the leaves last in the node
list, the earliest last, the walk starts from the earliest leaf and runs each right after
what it reads.
"""

from __future__ import annotations

import onnx


def leaves_last(proto: onnx.ModelProto) -> bool:
    """Move the nodes whose outputs no node reads to the end of ``proto``'s node list, in place:
    the one reading the latest-placed producer first, ties in their order. Whether the order
    changed: not where a node holds a subgraph (its inner reads are not seen here)."""
    nodes = list(proto.graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return False
    read = {name for n in nodes for name in n.input}
    position = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    leaves = [i for i, n in enumerate(nodes) if not any(out in read for out in n.output if out)]
    is_leaf = set(leaves)
    inner = [n for i, n in enumerate(nodes) if i not in is_leaf]

    def after(i: int) -> int:
        return max((position[name] for name in nodes[i].input if name in position), default=-1)

    order = inner + [nodes[i] for i in sorted(leaves, key=lambda i: (-after(i), i))]
    if [id(n) for n in order] == [id(n) for n in nodes]:
        return False
    copies = []
    for n in order:  # copied: the list's entries are deleted before they are added back
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del proto.graph.node[:]
    proto.graph.node.extend(copies)
    return True
