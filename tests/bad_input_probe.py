"""The bad-input probe: every case of issue 30 and more, run as a user would, each sorted into one outcome.

    OMP_NUM_THREADS=1 python tests/bad_input_probe.py            # prints a table: case | outcome | what was seen
    OMP_NUM_THREADS=1 python tests/bad_input_probe.py plan       # only the cases whose name holds "plan"

Outcomes: ``error`` (one of our errors: a ``UserError`` from the API, exit status 2 and one line from the CLI),
``result`` (it ran, and the result was checked to be right), ``SILENT WRONG`` (it ran, and the result is wrong)
and ``CRASH`` (any other exception, or a traceback / another exit status from the CLI). The probe exits 1 when any
case is SILENT WRONG or CRASH. It builds a tiny random Llama (no download) in a temp dir; a few minutes on 2 cores.
Not collected by pytest (no ``test_`` prefix): tests/test_inputs.py holds a test for each case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_tiny_llm  # noqa: E402

import st_llm2vec  # noqa: E402
from st_llm2vec import cli  # noqa: E402
from st_llm2vec.errors import UserError  # noqa: E402


class Wrong(Exception):
    """A result that ran and is not right."""


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv, report_errors=True)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue().strip()


def cli_case(argv: list[str]) -> str:
    """A CLI call must end in our one-line error (exit 2)."""
    code, err = run_cli(argv)
    if code == 2 and "Traceback" not in err and len(err.splitlines()) == 1:
        raise UserError(err.split("error: ", 1)[-1])
    raise RuntimeError(f"exit {code}: {err[-300:]}")


class Probe:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.llama = make_tiny_llm(root / "llama")
        self.portable = root / "portable"
        st_llm2vec.from_llm(str(self.llama), format="portable").save(str(self.portable))
        self.exact = root / "exact"
        st_llm2vec.from_llm(str(self.llama), format="exact").save(str(self.exact))

    # -- the cases --------------------------------------------------------------------------

    def max_seq_length_1(self) -> str:
        model = st_llm2vec.from_llm(str(self.llama))
        model.max_seq_length = 1
        a, b = model.encode(["hello world", "totally other text"])
        if np.allclose(a, b):
            raise Wrong("two identical vectors")
        return "different vectors"

    def nf4_with_bf16_mixed(self) -> str:
        model = st_llm2vec.from_llm(str(self.llama), quantization="nf4", precision="bf16-mixed")
        raise Wrong(f"accepted: {model.precision_plan.describe() if model.precision_plan else 'no plan'}")

    def precision_plan(self, field: str, value) -> Callable[[], str]:
        def case() -> str:
            path = copy(self.portable, self.root / f"plan-{field}")
            model = st_llm2vec.from_llm(str(self.llama), format="portable", precision="bf16-mixed",
                                        precision_min_cosine=0.5)
            model.save(str(path))
            plan = path / "st_llm2vec_precision.json"
            if not plan.is_file():
                return "no plan saved on this CPU: case not reached"
            edit_json(plan, **{field: value})
            loaded = st_llm2vec.load_model(str(path), precision="saved")
            raise Wrong(f"loaded: {loaded.precision_plan.describe() if loaded.precision_plan else 'no plan'}")
        return case

    def eval_nan_gold(self) -> str:
        tsv = self.root / "pairs.tsv"
        tsv.write_text("sentence1\tsentence2\tscore\na b\tc d\t1\ne f\tg h\tnan\n")
        return cli_case(["eval", str(self.portable), "--tasks", str(tsv), "--output", str(self.root / "eval-out")])

    def eval_damaged_llm_config(self) -> str:
        path = copy(self.llama, self.root / "llm-architectures-5")
        edit_json(path / "config.json", architectures=5)
        tsv = self.root / "good-pairs.tsv"
        tsv.write_text("sentence1\tsentence2\tscore\na b\tc d\t1\ne f\tg h\t0\n")
        return cli_case(["eval", str(path), "--tasks", str(tsv), "--output", str(self.root / "eval-out-2")])

    def from_llm_none(self) -> str:
        st_llm2vec.from_llm(None)
        raise Wrong("accepted None")

    def prompt_int(self, source: Path) -> Callable[[], str]:
        def case() -> str:
            path = copy(source, self.root / f"prompt-int-{source.name}")
            edit_json(path / "config_sentence_transformers.json", prompts={"query": 123})
            st_llm2vec.load_model(str(path)).encode(["x"], prompt_name="query")
            raise Wrong("encoded with prompt 123")
        return case

    def lone_surrogate(self) -> str:
        st_llm2vec.load_model(str(self.portable)).encode(["\ud800abc"])
        raise Wrong("encoded a text that is not valid Unicode")

    def export_bad_config(self) -> str:
        path = copy(self.portable, self.root / "bad-config")
        (path / "config.json").write_text("{not json")
        return cli_case(["export", str(path), str(self.root / "out-bad-config")])

    def export_parent_is_file(self) -> str:
        (self.root / "a-file").write_text("x")
        return cli_case(["export", str(self.portable), str(self.root / "a-file" / "out")])

    def export_parent_not_writable(self) -> str:
        locked = self.root / "locked"
        locked.mkdir(exist_ok=True)
        os.chmod(locked, 0o555)
        os.chmod(self.root, 0o755)
        argv = [sys.executable, "-m", "st_llm2vec.cli", "export", str(self.portable), str(locked / "out")]
        if os.geteuid() == 0:  # root may write anywhere: run as nobody where the system allows it
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                return "not run: root, and no setpriv to drop privileges"
            argv = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", env={**os.environ, "HOME": str(self.root)})
        err = done.stderr.strip().splitlines()
        if done.returncode == 2 and err and "Traceback" not in done.stderr:
            raise UserError(err[-1].split("error: ", 1)[-1])
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-300:]}")

    # -- more ---------------------------------------------------------------------------------------

    def stock_vectors(self, texts: list[str], prompt: str | None = None) -> Callable[[], str]:
        def case() -> str:
            from sentence_transformers import SentenceTransformer

            ours = st_llm2vec.load_model(str(self.portable)).encode(texts, prompt=prompt)
            stock = SentenceTransformer(str(self.portable)).encode(texts, prompt=prompt)
            gap = float(np.abs(ours - stock).max())
            if gap > 1e-5:
                raise Wrong(f"differs from stock SentenceTransformer by {gap:.2e}")
            return f"equals stock (max |diff| {gap:.1e})"
        return case

    def recipe_config(self, text: bytes) -> Callable[[], str]:
        def case() -> str:
            config = self.root / "recipe.json"
            config.write_bytes(text)
            return cli_case(["simcse", str(config)])
        return case

    def damaged_model_file(self, name: str, content: str) -> Callable[[], str]:
        def case() -> str:
            path = copy(self.portable, self.root / f"damaged-{name.replace('/', '-')}")
            (path / name).write_text(content)
            st_llm2vec.load_model(str(path)).encode(["x"])
            raise Wrong("loaded and encoded")
        return case

    def exact_pooling_config(self) -> str:
        path = copy(self.exact, self.root / "exact-pooling")
        edit_json(path / "1_LLM2VecPooling" / "config.json", embedding_dimension="32")
        st_llm2vec.load_model(str(path))
        raise Wrong("loaded")

    def manifest(self) -> str:
        out = self.root / "embed-out"
        corpus = self.root / "corpus.jsonl"
        corpus.write_text('{"text": "one"}\n{"text": "two \\ud800"}\n{"text": "three"}\n')
        code, err = run_cli(["embed", str(self.portable), str(corpus), str(out), "--skip-bad"])
        rejected = (out / "rejected.jsonl").read_text() if (out / "rejected.jsonl").exists() else ""
        if code != 0 or "surrogate" not in rejected:
            raise Wrong(f"embed exit {code}, rejected: {rejected[:200]!r} {err[-200:]}")
        edit_json(out / "manifest.json", rows_per_shard="many")
        return cli_case(["embed", str(self.portable), str(corpus), str(out), "--skip-bad"])

    def run_record(self) -> str:
        from st_llm2vec.recipe.run_record import RUN_SCHEMA

        folder = self.root / "run"
        folder.mkdir(exist_ok=True)
        (folder / RUN_SCHEMA.name).write_text(json.dumps({"fingerprint": "x", "global_step": "ten"}))
        RUN_SCHEMA.read_whole(folder)
        raise Wrong("read")

    def eval_file(self, name: str, content: str) -> Callable[[], str]:
        def case() -> str:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            from st_llm2vec.eval.task_files import read_beir, read_scored_pairs

            (read_beir(path.parent.parent) if name.endswith("qrels/test.tsv") else read_scored_pairs(path))
            raise Wrong("read")
        return case

    def beir_dir(self) -> None:
        beir = self.root / "beir"
        beir.mkdir(exist_ok=True)
        (beir / "corpus.jsonl").write_text('{"_id": "d0", "text": "doc"}\n')
        (beir / "queries.jsonl").write_text('{"_id": "q0", "text": "query"}\n')

    def cases(self) -> list[tuple[str, Callable[[], str]]]:
        self.beir_dir()
        prompt = "query: "
        return [
            ("issue: max_seq_length = 1 leaves only BOS", self.max_seq_length_1),
            ("issue: nf4 + precision bf16-mixed (precision branch)", self.nf4_with_bf16_mixed),
            *[(f"issue: plan {field} = {value!r} (precision branch)", self.precision_plan(field, value))
              for field, value in (("float32_layers", "all"), ("float32_layers", [99]), ("layers", 999),
                                   ("dtype", "float8"))],
            ("issue: eval --tasks FILE.tsv, gold score nan", self.eval_nan_gold),
            ("issue: from_llm(None)", self.from_llm_none),
            ("issue: prompts.query = 123 (portable dir)", self.prompt_int(self.portable)),
            ("issue: prompts.query = 123 (exact dir)", self.prompt_int(self.exact)),
            ("issue: encode(['\\ud800abc'])", self.lone_surrogate),
            ("issue: export, invalid JSON in M/config.json", self.export_bad_config),
            ("issue: export, a parent of OUT is a file", self.export_parent_is_file),
            ("issue: export, OUT's parent not writable", self.export_parent_not_writable),
            ("portable dir: encode(['']) vs stock", self.stock_vectors([""])),
            ("portable dir: whitespace, long (300 tokens) vs stock", self.stock_vectors([" ", "\n\t", "x " * 300])),
            ("portable dir: prompt only ('' with a prompt) vs stock", self.stock_vectors(["", "a"], prompt)),
            ("recipe config: NaN learning_rate", self.recipe_config(
                b'{"model_name_or_path": "m", "output_dir": "o", "learning_rate": NaN}')),
            ("recipe config: random bytes", self.recipe_config(bytes(range(256)))),
            ("recipe config: truncated JSON", self.recipe_config(b'{"model_name_or_path": "m", "outp')),
            ("portable dir: modules.json truncated", self.damaged_model_file("modules.json", '[{"idx": 0, "na')),
            ("portable dir: 1_Pooling/config.json include_prompt 'no'", self.damaged_model_file(
                "1_Pooling/config.json", json.dumps({"pooling_mode": "mean", "include_prompt": "no"}))),
            ("portable dir: tokenizer_config model_max_length -3", self.damaged_model_file(
                "tokenizer_config.json", json.dumps({"model_max_length": -3}))),
            ("exact dir: pooling embedding_dimension '32'", self.exact_pooling_config),
            ("embed: a '\\ud800' row rejected; manifest rows_per_shard 'many'", self.manifest),
            ("embed: --workers 2 without --engine ray", lambda: cli_case(
                ["embed", str(self.portable), str(self.root / "corpus.jsonl"), str(self.root / "e2"), "--workers", "2"])),
            ("export: --converter with --backend onnx", lambda: cli_case(
                ["export", str(self.portable), str(self.root / "o2"), "--converter", "x.py"])),
            ("export: --min-cosine nan", lambda: cli_case(
                ["export", str(self.portable), str(self.root / "o3"), "--min-cosine", "nan"])),
            ("from_llm: format portable + weighted_mean", lambda: st_llm2vec.from_llm(
                str(self.llama), "weighted_mean", format="portable")),
            ("eval file: JSONL score NaN", self.eval_file(
                "p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": NaN}\n')),
            ("eval file: BEIR qrels score inf", self.eval_file("beir/qrels/test.tsv", "q0\td0\tinf\n")),
            ("run record: global_step 'ten'", self.run_record),
            ("eval: an LLM dir whose config.json architectures is 5", self.eval_damaged_llm_config),
            ("encode: prompt with a lone surrogate", lambda: st_llm2vec.load_model(str(self.portable)).encode(
                ["x"], prompt="\udfff: ")),
        ]


def outcome(case: Callable[[], str]) -> tuple[str, str]:
    try:
        seen = case()
    except Wrong as exc:
        return "SILENT WRONG", str(exc)
    except UserError as exc:
        return "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    except Exception as exc:  # noqa: BLE001 - what the probe is for
        return "CRASH", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return "result", seen or "ran"


def main() -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        probe = Probe(Path(tmp))
        only = sys.argv[1] if len(sys.argv) > 1 else ""
        rows = [(name, *outcome(case)) for name, case in probe.cases() if only in name]
    print("| case | outcome | what was seen |\n|---|---|---|")
    for name, kind, seen in rows:
        print(f"| {name} | {kind} | {seen[:160].replace('|', '/')} |")
    bad = [r for r in rows if r[1] in ("SILENT WRONG", "CRASH")]
    print(f"\n{len(rows)} cases: {len(rows) - len(bad)} a result or our error, {len(bad)} silent wrong or crash.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
