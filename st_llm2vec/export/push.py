"""``st-llm2vec push``: an exported model dir to the Hugging Face Hub, as it is, after loading it (a broken export
is never uploaded); the repo id and the token are checked before any long work."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, MissingFileError, NotPermittedError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def _check_repo_id(repo_id: str) -> None:
    """A repo id the Hub accepts (huggingface_hub's rules), with its namespace written out: without one,
    the upload would land under whichever account the token belongs to."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    expected = f"Hub repo id {repo_id!r} must look like 'user-or-org/model-name'"
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise InputError(f"{expected}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError(f"{expected}: {exc}") from None


def check_push_target(repo_id: str) -> None:
    """Fail before a long conversion when the repo id is malformed or no Hub token is available."""
    from huggingface_hub import get_token

    _check_repo_id(repo_id)
    if not get_token():
        raise NotPermittedError(
            "No Hugging Face token found: run `hf auth login` or set HF_TOKEN, then push again."
        )


def _check_model_dir(directory: Path) -> None:
    """A dir worth pushing: an ST model (modules.json) whose weights are readable safetensors."""
    if not (directory / "modules.json").is_file():
        raise MissingFileError(f"{directory} is not a Sentence-Transformers model dir (no modules.json); run `st-llm2vec convert` first.")
    from ..model_files import CheckpointError, check_safetensors

    weights = sorted(directory.rglob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"{directory} holds no safetensors weights; re-run `st-llm2vec convert`.")
    for file in weights:
        check_safetensors(file)


def push(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an exported model dir as-is with ST's ``push_to_hub``; returns the commit URL.

    The dir is loaded (on CPU) first, so a broken export is never uploaded. The token comes from
    ``token``, else HF_TOKEN / ``hf auth login``; it is never logged or written.
    """
    directory = Path(directory).expanduser().absolute()
    _check_model_dir(directory)
    if token is None:
        check_push_target(repo_id)
    else:
        _check_repo_id(repo_id)
    return push_dir(directory, repo_id, private=private, token=token, commit_message=commit_message)


def push_dir(
    directory: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    model: SentenceTransformer | None = None,
) -> str:
    # With local_model_path, push_to_hub uploads that folder verbatim (the model object only supplies
    # card data). Loading the dir first proves it is a working model before anything is uploaded.
    from sentence_transformers import SentenceTransformer

    model = model if model is not None else SentenceTransformer(str(directory), device="cpu")
    url = model.push_to_hub(
        repo_id,
        token=token,
        private=private,
        local_model_path=str(directory),
        exist_ok=True,
        commit_message=commit_message or f"Upload {directory.name} (st-llm2vec export)",
    )
    logger.info("Pushed %s to %s", directory, repo_id)
    return url


# -- CLI ------------------------------------------------------------------------------------------


def add_arguments_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a model dir written by `st-llm2vec convert`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo, 'user-or-org/name' (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--commit-message", help="commit message for the upload")


def run_push(args: argparse.Namespace) -> int:
    url = push(args.directory, args.repo_id, private=args.private or None, commit_message=args.commit_message)
    print(f"Pushed {args.directory} to {url}")
    return 0
