"""Running a model: the one :class:`~.upsampler.Upsampler` interface, its backends
(built-in midpoint, PyTorch, ONNX Runtime, TensorRT), model files, ONNX export and the
standard patch protocol. Get one with :func:`sspu_ros.runtime.loading.load_upsampler`."""
