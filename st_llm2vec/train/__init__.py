"""The training wing: the LLM2Vec recipe's stages (MNTP, SimCSE, supervised) on the Sentence Transformers trainer.

``config`` (one declaration per key) → ``recipe`` (what every stage shares: config, run, start model, card,
command line) → ``stage_<name>`` (a stage's own keys, data and trainer); ``mntp`` / ``contrastive`` hold the
ST components (losses, collators, evaluators), ``runs`` one run per output dir, ``trainer`` the one trainer
subclass, ``text_data`` / ``pair_data`` the training data, ``lora`` the adapters.
A new stage is a ``stage_<name>.py`` here and one line in ``st_llm2vec.cli.COMMANDS``.
"""
