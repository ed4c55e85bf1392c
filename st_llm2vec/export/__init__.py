"""The export wing: a model dir to another runtime's format, proven through that runtime before it is written.

``convert`` (a causal LM or llm2vec checkpoint stack → a standalone ST dir), ``push`` (to the Hub) and
``st-llm2vec export``: ``command`` reads the backend table (``backends``: onnx, gguf, openvino) and hands over to
the backend's module (``onnx``, ``gguf``); ``pipeline`` is what every backend does around its conversion. A new
backend is an entry in ``backends.BACKENDS`` and a module with ``run(args)`` and ``export(source, output, ...)``.
"""
