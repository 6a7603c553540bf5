"""Write the relevance pass as ONNX operators (``lrpath compile``)."""
