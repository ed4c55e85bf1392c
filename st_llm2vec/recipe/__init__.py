"""The training wing: the LLM2Vec recipe's stages (MNTP, SimCSE, supervised) on the Sentence Transformers trainer.
(The configs and launchers that run them live in the repository's ``training/`` folder.)

Tables: ``stages`` (the stages and the command that runs each) and ``losses`` (the contrastive losses).
What every stage shares: ``keys`` (one declaration per config key) and ``config`` (a whole config checked) →
``arguments`` (a stage's typed config) → ``lifecycle`` (one run per output dir: ``training_run``, ``run_record``)
around ``trainer`` (the one trainer subclass), with ``stage_model`` (start model, LoRA via ``lora``, merge, card)
and ``command`` (a stage's command line). Each stage: ``stage_mntp`` (with ``mntp_masking``, ``mntp_head``,
``mntp_loss`` and the corpus of ``text_data``) and ``stage_contrastive`` (with ``contrastive_arguments``,
``contrastive`` and the pairs of ``pair_data`` / ``pair_files``). ``presets``: short CPU configs of the stages.

A new stage is an entry in ``stages.STAGES`` and a ``stage_<name>.py`` here; a new contrastive loss, an entry in
``losses.LOSSES``.
"""
