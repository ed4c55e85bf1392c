"""``LLM2VecModel``: the ``SentenceTransformer`` that ``from_llm`` returns, whose ``save`` writes the format its
encoder computes in.

ST's ``save`` names each module's own class in modules.json; for a model in the portable format that
would be our classes, which stock loaders cannot import. So ``save`` hands portable models to
:func:`st_llm2vec.portable_save.save_portable` (stock modules, proven in a fresh process) and everything else
— the exact format, training checkpoints with an unmerged LoRA — to ST's own ``save``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from peft import PeftModel
from sentence_transformers import SentenceTransformer

from .cards import patch_card, write_recipe
from .encoder.tokenize import check_unicode
from .instructions import EXACT, PORTABLE
from .portable import PortableFormatError, why_not_portable
from .portable_save import save_portable
from .files import normalize_permissions
from .model_files import ST_CONFIG

logger = logging.getLogger(__name__)


class LLM2VecModel(SentenceTransformer):
    """A SentenceTransformer built by st_llm2vec; ``save`` writes the portable format when the model is in it.

    ``portable_required`` (set by ``from_llm(format="portable")``): a failed portability proof raises
    instead of falling back to the exact format. After each ``save``, ``save_report`` says which format
    was written, why (for a fallback) and the proof's figures.
    """

    portable_required: bool = False
    save_report: dict[str, Any] | None = None
    st_llm2vec_recipe: dict[str, Any] | None = None  # how it was made (cards.extend_recipe), saved with it

    def __init__(self, model_name_or_path: str | None = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(model_name_or_path, str) and os.path.isdir(model_name_or_path):
            ST_CONFIG.read(model_name_or_path, missing_ok=True)  # ST's loader would take any prompt value
        super().__init__(model_name_or_path, *args, **kwargs)

    def save(
        self,
        path: str,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write the model (float32 weights; the portable proof runs in float32), then its precision plan, if any."""
        from .precision import full_precision, plan_of, save_plan

        plan = plan_of(getattr(self[0], "model", None))
        with full_precision(self):
            self._save(path, model_name, create_model_card, safe_serialization, plan)
        save_plan(path, plan)
        recipe = getattr(self, "st_llm2vec_recipe", None)  # set by the training stages (recipe.stage_model)
        if recipe:
            write_recipe(path, recipe, self.save_report)

    def encode(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """ST's ``encode``, after refusing a text that is not valid Unicode by its index in ``inputs``."""
        check_unicode(inputs)
        return super().encode(inputs, *args, **kwargs)

    @property
    def precision_plan(self):
        """The measured precision plan this model encodes with (None: float32), see :mod:`st_llm2vec.precision`."""
        from .precision import plan_of

        return plan_of(getattr(self[0], "model", None))

    def _save(self, path: str, model_name: str | None, create_model_card: bool, safe_serialization: bool,
              plan: Any) -> None:
        encoder = self[0]
        fallback = None
        if getattr(encoder, "format", EXACT) == PORTABLE:
            fallback = why_not_portable(self)
            if fallback is None:
                card = None
                if create_model_card:
                    card = lambda directory, report: self._card_text(directory, model_name, PORTABLE, report, plan)  # noqa: E731
                try:
                    report = save_portable(self, path, card=card)
                    self.save_report = {"format": PORTABLE, "proof": report}
                    return
                except PortableFormatError as exc:
                    if self.portable_required:
                        raise
                    fallback = str(exc)
            if not isinstance(encoder.model, PeftModel):  # a checkpoint with its LoRA: exact, quietly
                logger.warning("Saving %s in the exact format (needs st_llm2vec to load): %s", path, fallback)
        super().save(path, model_name=model_name, create_model_card=False, safe_serialization=safe_serialization)
        if create_model_card:
            (Path(path) / "README.md").write_text(self._card_text(Path(path), model_name, EXACT, None, plan),
                                                 encoding="utf-8")
        normalize_permissions(path)  # safetensors writes 0600 files; a saved model follows the umask
        self.save_report = {"format": EXACT, "reason": fallback}

    def _card_text(self, directory: Path, model_name: str | None, save_format: str, report: dict[str, Any] | None,
                   plan: Any = None) -> str:
        """ST's generated card, with the loading section for ``save_format`` (and the precision plan, if any)."""
        from sentence_transformers.base.model_card import generate_model_card

        if model_name and not Path(model_name).exists() and not self.model_card_data.model_id:
            self.model_card_data.model_id = model_name  # as ST's save does
        self.model_card_data.save_dir = str(directory)
        text = generate_model_card(self)
        return patch_card(text, save_format, self.model_card_data.model_id or model_name, self.prompts, report, plan,
                          getattr(self, "st_llm2vec_recipe", None))
