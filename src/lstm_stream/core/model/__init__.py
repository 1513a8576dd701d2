"""What a model is: its contract, the names of its inputs and outputs, the ONNX
reader, the reference cell maths and the shipped models."""
