"""Embedding a whole corpus: ``st-llm2vec embed MODEL INPUT OUT`` (resumable, in this process or on Ray Data) and
``st-llm2vec search OUT QUERY``.

One concern per module, in the order of a job: ``inputs`` (files → rows, with where each row is), ``plan`` (the
checking pass and the shard plan), ``update`` (``--update``), ``encoding`` (the model, its prompt, one shard's
texts → vectors), ``local`` / ``ray_engine`` (the two engines), ``shards`` (the Parquet writer), ``manifest``
(what made the vectors, from what, and where they are), ``job`` (the order of work), ``search``, ``command``
(the CLI). Nothing outside this package imports it except the CLI's command table; importing it is free (this
file imports nothing).
"""
