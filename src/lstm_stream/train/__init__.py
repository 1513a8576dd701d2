"""Offline training and ONNX export: from recorded sequences to a servable step model.

``config`` (typed TOML configs), ``data`` (sources and the split by episode),
``model`` (the torch network), ``loop`` (TBPTT training, checkpoints),
``distributed`` (torchrun/DDP), ``export`` (the verified ONNX step model) and
``cli`` (``lstm-stream train`` and ``lstm-stream export``). Everything except
``config`` and ``cli`` imports torch; ``cli`` imports it only inside its handlers.
"""
