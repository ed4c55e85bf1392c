"""The export wing: a model dir to another runtime's format, proven through that runtime before it is written.

``convert`` (a causal LM or llm2vec checkpoint stack → a standalone ST dir; ``push`` to the Hub) and one
module per backend (``onnx``). A new backend is a module here with ``add_arguments_export`` options and
one entry in ``st_llm2vec.cli.COMMANDS``.
"""
