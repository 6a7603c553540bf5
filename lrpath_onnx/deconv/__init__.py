"""Zeiler–Fergus deconvolution (paper, Algorithms 2–3): what single neurons see, in pixels."""

from .reconstruct import Neuron, reconstruct, select_neurons

__all__ = ["Neuron", "reconstruct", "select_neurons"]
