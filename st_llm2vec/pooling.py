"""llm2vec's pooling as an ST module: its settings, loading and checks; each mode's computation is its row of
:data:`~st_llm2vec.pooling_modes.MODES`.

Written by hand because ST's ``Pooling`` cannot express llm2vec's semantics: its ``weightedmean``
numbers positions from the start of the padded row (llm2vec numbers the pooled tokens 1..N), it has
no ``bos_token`` mode, and ``include_prompt=False`` drops a prefix counted from the left, whereas
llm2vec pools the last N tokens (text part plus any wrapper suffix). The encoder supplies that
selection as ``embed_mask``; everything is vectorised (llm2vec loops over rows in Python).
Rows arrive padded on either side (the encoder unpacks a packed batch), and pooling reads positions
only through the masks, so either layout pools the same; afterwards the rows are handed on in the layout
the encoder chose for the call (:func:`~st_llm2vec.encoder.layout.hand_on`: right-padded in ``encode``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from sentence_transformers.base.modules.module import Module

from .encoder import LLM2VecTransformer
from .encoder.layout import hand_on
from .errors import InputError, MissingFileError
from .instructions import EMBED_MASK, TOKEN_WEIGHTS_SUM
from .pooling_modes import MODES, PoolingMode, check_tokenizer, pooling_mode


class LLM2VecPooling(Module):
    """Pool token embeddings into a sentence embedding: mean, weighted_mean, eos_token or bos_token.

    ``skip_instruction`` (llm2vec's default) pools only the text tokens; without it, every attended
    token. A row whose text part is empty falls back to all its attended tokens.
    """

    config_keys: list[str] = ["embedding_dimension", "pooling_mode", "skip_instruction"]
    config_file_name: str = "config.json"

    def __init__(self, embedding_dimension: int, pooling_mode: str | PoolingMode = "mean",
                 skip_instruction: bool = True) -> None:
        super().__init__()
        if isinstance(embedding_dimension, bool) or not isinstance(embedding_dimension, int) or embedding_dimension < 1:
            raise InputError(f"embedding_dimension must be a positive int, got {embedding_dimension!r}")
        if not isinstance(skip_instruction, bool):
            raise InputError(f"skip_instruction must be true or false, got {skip_instruction!r}")
        self.embedding_dimension = embedding_dimension
        self.pooling_mode = pooling_mode
        self.skip_instruction = skip_instruction

    @property
    def pooling_mode(self) -> str:
        """The canonical name of the mode (what ``config.json`` holds)."""
        return self._pooling_mode

    @pooling_mode.setter
    def pooling_mode(self, value: str | PoolingMode) -> None:
        self._pooling_mode = pooling_mode(value).name

    @property
    def mode(self) -> PoolingMode:
        """The mode's row of :data:`~st_llm2vec.pooling_modes.MODES`."""
        return MODES[self._pooling_mode]

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    @classmethod
    def load_config(cls, model_name_or_path: str, subfolder: str = "", config_filename: str | None = None, **kwargs: Any):
        """ST's loader, plus errors naming the file for invalid JSON and unknown keys."""
        where = os.path.join(model_name_or_path, subfolder, config_filename or cls.config_file_name)
        try:
            config = super().load_config(model_name_or_path, subfolder=subfolder, config_filename=config_filename, **kwargs)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where} is not valid JSON ({exc}); fix it or re-save the model.") from exc
        if not config:
            raise MissingFileError(f"{where} is missing or empty: it holds the pooling settings. Restore it or re-save the model.")
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; valid keys: {cls.config_keys}. Remove or rename them.")
        return config

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", *args: Any, **kwargs: Any) -> LLM2VecPooling:
        """ST's loader; bad values are reported with the file they came from."""
        where = os.path.join(model_name_or_path, subfolder, cls.config_file_name)
        try:
            module = super().load(model_name_or_path, subfolder, *args, **kwargs)
        except ValueError as exc:
            if where in str(exc):
                raise
            raise InputError(f"{where}: {exc}") from None
        module.config_path = where
        return module

    def on_model_ready(self, model: Any) -> None:
        """The pooled size must be the backbone's hidden size (a hand-edited config would be believed)."""
        modules = list(model)
        position = next((i for i, module in enumerate(modules) if module is self), 0)
        backbone = next((m for m in reversed(modules[:position]) if isinstance(m, LLM2VecTransformer)), None)
        if backbone is None:
            return
        hidden = backbone.get_embedding_dimension()
        where = getattr(self, "config_path", None) or "LLM2VecPooling"
        if hidden != self.embedding_dimension:
            raise InputError(
                f"{where}: embedding_dimension is {self.embedding_dimension} but the backbone's hidden size is "
                f"{hidden}, and pooling does not change the size. Set embedding_dimension to {hidden}."
            )
        if backbone.tokenizer is not None:
            check_tokenizer(self.mode, backbone.tokenizer, where)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        text_mask = features.get(EMBED_MASK) if self.skip_instruction else None
        # given: the portable format's stock divisor (see the encoder's tokenization)
        divisor = features.get(TOKEN_WEIGHTS_SUM) if self.skip_instruction else None
        features["sentence_embedding"] = self.mode.pool(features["token_embeddings"], features["attention_mask"],
                                                        text_mask, divisor)
        return hand_on(features)

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Only a config: the module has no weights."""
        self.save_config(output_path)

