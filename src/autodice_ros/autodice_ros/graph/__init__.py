"""ONNX graphs: loading and checking models, node ids, shapes and topological order, costs, the zoo."""
