"""``import st_llm2vec`` stays cheap, and still registers our module classes with sentence-transformers.

Each check runs in a fresh interpreter: what this test process has already imported must not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from st_llm2vec.cli import COMMANDS


def _python(code: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


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


def test_cli_help_answers_fast_and_lists_the_commands():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "st_llm2vec.cli", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in COMMANDS)
    assert elapsed < 3, f"st-llm2vec --help took {elapsed:.1f} s"


def test_every_subcommands_help_imports_neither_torch_nor_transformers_nor_sentence_transformers():
    """``st-llm2vec COMMAND --help`` must answer at once: its options are built without the heavy stack."""
    code = (
        "import json, sys, contextlib, io\n"
        "from st_llm2vec.cli import COMMANDS, main\n"
        "heavy = {}\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "    heavy[name] = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'sentence_transformers'})\n"
        "print(json.dumps(heavy))\n"
    )
    heavy = json.loads(_python(code))
    assert set(heavy) == set(COMMANDS)
    assert {name: mods for name, mods in heavy.items() if mods} == {}


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
