"""Where a model comes from and whether its files can be read: a Hugging Face Hub id or a local path, and
safetensors weights that are complete. Checked before loading, so a corrupt download is named, not a
traceback from deep inside a loader."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import InputError


class CheckpointError(InputError):
    """A checkpoint (a model's weights, an adapter, an llm2vec stack) that cannot be used as given; the message names
    the fix."""


def looks_like_hub_id(ref: str) -> bool:
    """``ref`` has the form of a Hugging Face Hub id ("name" or "owner/name"); anything else
    (``./x``, ``~/x``, ``/abs/path``, ``a/b/c``) can only be a local path."""
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def check_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file; a CheckpointError if its header or size is corrupt."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}); it is truncated or corrupt. Re-download or re-save it."
        ) from exc
