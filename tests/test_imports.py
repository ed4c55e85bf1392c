"""st_llm2vec/__init__.py: ``import st_llm2vec`` stays cheap, and still registers our module classes with sentence-transformers.

Each check runs in a fresh interpreter: what this test process has already imported must not count.
"""

from __future__ import annotations

import json

import pytest
from sentence_transformers import SentenceTransformer

import st_llm2vec
from conftest import run_python as _python


def test_importing_the_package_loads_neither_sentence_transformers_nor_the_trainer_stack():
    loaded = json.loads(_python("import json, sys, st_llm2vec; print(json.dumps(sorted(sys.modules)))"))
    heavy = [m for m in loaded if m.split(".")[0] in ("sentence_transformers", "torch")
             or m.startswith("transformers.trainer")]
    assert heavy == []


def test_public_names_resolve_on_use():
    names = json.loads(_python(
        "import json, st_llm2vec as p; print(json.dumps({n: getattr(p, n).__module__ for n in p.__all__}))"))
    assert set(names) == set(__import__("st_llm2vec").__all__)
    assert all(module.startswith("st_llm2vec.") for module in names.values())


@pytest.fixture(scope="module")
def exact_dir(tmp_path_factory):
    import st_llm2vec
    from conftest import make_tiny_llm

    root = tmp_path_factory.mktemp("imports")
    st_llm2vec.from_llm(str(make_tiny_llm(root / "llm")), format="exact").save(str(root / "exact"))
    return root / "exact"


LOAD = """
from sentence_transformers import SentenceTransformer
model = SentenceTransformer({path!r})
print(type(model[0]).__module__ + "." + type(model[0]).__qualname__, type(model[1]).__qualname__)
"""


@pytest.mark.parametrize("first", [
    "import st_llm2vec",  # before sentence-transformers: the import hook registers
    "import sentence_transformers; import st_llm2vec",  # after: registered right away
    "from st_llm2vec.encoder import LLM2VecTransformer",  # our own module pulls sentence-transformers in
])
def test_exact_format_loads_without_trust_remote_code_in_any_import_order(exact_dir, first):
    out = _python(first + "\n" + LOAD.format(path=str(exact_dir)))
    assert out.split() == ["st_llm2vec.encoder.LLM2VecTransformer", "LLM2VecPooling"]


def test_importing_st_llm2vec_registers_the_exact_format_classes_through_one_private_st_attribute(tiny_llm, tmp_path):
    """The exact format's one private-API touch: ST's class-level ``_module_classes``. Fails loudly if ST drops it."""
    from sentence_transformers.base.model import BaseModel

    registered = BaseModel._module_classes
    assert registered["st_llm2vec.encoder.LLM2VecTransformer"] is st_llm2vec.LLM2VecTransformer
    assert registered["st_llm2vec.pooling.LLM2VecPooling"] is st_llm2vec.LLM2VecPooling
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="exact").save(str(tmp_path / "exact"))
    assert isinstance(SentenceTransformer(str(tmp_path / "exact"))[0], st_llm2vec.LLM2VecTransformer)
