"""Exporting a trained model: ONNX (and its int8 quantisation), TFLite and bioimage.io."""
