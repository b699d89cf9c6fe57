"""Running a model on images: engines (ONNX Runtime, TFLite, Keras), tiled prediction, one
image with its automatic scale, and huge images block by block."""
