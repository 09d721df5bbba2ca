"""Exporting a trained model: the ONNX file of its whole inference path (graph.py, onnx_file.py)."""
