"""Reading ONNX graphs: which nodes a tensor depends on, and analytic FLOPs."""
