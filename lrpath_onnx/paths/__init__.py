"""Neuron paths (the paper's contribution): neuron graph, K best paths, path heatmaps,
GetOptimizer and the MSE/SMAPE choice of how few paths suffice."""

from .kbest import k_best_paths, longest_path
from .neurons import SINK, SOURCE, NeuronGraph, build, explain_for_graph, graph_layers
from .optimizer import get_optimizer, select_getoptimizer
from .ranking import SCORES, best_paths

__all__ = ["NeuronGraph", "SCORES", "SINK", "SOURCE", "best_paths", "build", "explain_for_graph",
           "get_optimizer", "graph_layers", "k_best_paths", "longest_path", "select_getoptimizer"]
