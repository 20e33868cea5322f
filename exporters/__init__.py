"""Exporters: turn a PyTorch multi-exit model, a cut ONNX classifier or a model family
into a bundle (installed as `edgeadapt.exporters`)."""
