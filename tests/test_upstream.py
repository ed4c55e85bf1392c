"""Every private name of another library that st_llm2vec uses (st_llm2vec/upstream.py) exists on the installed
versions: an upgrade that drops or renames one fails here, by name."""

from __future__ import annotations

import pytest

from st_llm2vec.upstream import PRIVATE_USES


@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda u: f"{u.owner.rpartition(':')[2]}.{u.name}")
def test_each_private_name_we_use_still_exists_upstream(use):
    import inspect

    if use.extra:
        pytest.importorskip(use.owner.partition(".")[0].partition(":")[0], reason=f"the {use.extra} extra is not installed")
    owner = use.resolve()
    # a class attribute or method, or an attribute its instances get in the class's own code
    source = inspect.getsource(owner)
    exists = hasattr(owner, use.name) or f"self.{use.name} " in source or f'"{use.name}"' in source
    assert exists, f"{use.owner} has no {use.name} any more ({use.why})"


def test_no_private_name_of_another_library_is_used_outside_the_list():
    """A cheap scan: private attribute names of ST / transformers classes appear in the code only if listed."""
    import re
    from pathlib import Path

    listed = {use.name for use in PRIVATE_USES}
    listed |= {part for use in PRIVATE_USES for part in re.split(r"[.:]", use.owner) if part.startswith("_")}
    watched = {"_module_classes", "_get_model_config", "_get_prompt_length", "_create_model_card", "_tokenizer",
               "_hf_peft_config_loaded", "_attn_implementation", "_unpad_inputs", "_name_or_path", "_actions",
               "_raise_exceptions_for_missing_entries", "_merge_processing_kwargs", "_is_flash_attention_requested",
               "_buffers", "_modules", "_parameters", "_apply", "_content_hashes"}
    root = Path(__file__).resolve().parents[1] / "st_llm2vec"
    found = {name for path in root.rglob("*.py") for name in re.findall(r"\.(_[a-z][a-z_]*)\b", path.read_text())}
    assert not (found & watched) - listed
