"""The evaluation wing: scoring any embedding model the standard way.

``devsets`` (the shared dev data and small built-in sets as Sentence Transformers evaluators) and ``scores``
(running evaluators and naming their scores). A new evaluation goes here.
"""
