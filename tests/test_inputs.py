"""Every input works or says why (issue 30): each bad-input case of the issue, the options that cannot act together,
a portable dir giving stock's vector for odd texts, and every file reader against random, truncated and mistyped
files (hypothesis: a valid result or our error, never another exception). ``tests/bad_input_probe.py`` runs the
same cases as a user would and prints a table."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import st_llm2vec
from st_llm2vec import cli
from st_llm2vec.errors import InputError, NotPermittedError, UserError

# Derandomized: the same examples on every run and machine (a failure is reproducible, never flaky).
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def portable_dir(tiny_llm, tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "portable"
    st_llm2vec.from_llm(str(tiny_llm("llama")), format="portable").save(str(path))
    return path


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _cli_error(argv: list[str], capsys) -> str:
    assert cli.main(argv, report_errors=True) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- the cases


def test_a_max_seq_length_that_leaves_only_bos_is_refused_instead_of_giving_every_text_one_vector(tiny_llm):
    for format in ("portable", "exact"):
        model = st_llm2vec.from_llm(str(tiny_llm("llama")), format=format)
        model.max_seq_length = 1
        with pytest.raises(InputError, match="special tokens.*max_seq_length is 1.*same embedding"):
            model.encode(["hello world", "totally other text"])
        model.max_seq_length = 2  # one text token: the texts differ again
        a, b = model.encode(["hello world", "totally other text"])
        assert not np.allclose(a, b)


def test_an_eval_task_file_with_a_nan_gold_score_is_refused_naming_the_row(portable_dir, tmp_path, capsys):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\na b\tc d\t1\ne f\tg h\tnan\n")
    # a model that exists: a missing one would be named before the task file
    err = _cli_error(["eval", str(portable_dir), "--tasks", str(tsv), "--output", str(tmp_path / "o")], capsys)
    assert "pairs.tsv:3: score: expected a number, got 'nan'" in err
    from st_llm2vec.eval.task_files import read_scored_pairs

    headerless = tmp_path / "semeval.tsv"
    headerless.write_text("1.0\ta\tb\ninf\tc\td\n")
    with pytest.raises(InputError, match=r"semeval.tsv:2: expected 3 columns, one of them the score"):
        read_scored_pairs(headerless)


@pytest.mark.parametrize("bad", [None, 123, "", "  "])
def test_a_model_that_is_not_a_path_or_hub_id_is_refused_naming_the_argument(bad):
    with pytest.raises(InputError, match="model_name_or_path must be a checkpoint directory or a Hugging Face Hub id"):
        st_llm2vec.from_llm(bad)
    with pytest.raises(InputError, match="model_name_or_path must be"):
        st_llm2vec.load_model(bad)


@pytest.mark.parametrize("format", ["portable", "exact"])
def test_a_saved_prompt_that_is_not_text_is_refused_when_the_model_loads(tiny_llm, portable_dir, saved_dir, tmp_path,
                                                                         format):
    path = shutil.copytree(portable_dir if format == "portable" else saved_dir, tmp_path / "m")
    _edit(path / "config_sentence_transformers.json", prompts={"query": 123})
    with pytest.raises(InputError, match=r"config_sentence_transformers.json: field prompts.query: expected a string"):
        st_llm2vec.load_model(str(path))
    _edit(path / "config_sentence_transformers.json", prompts={"query": "q: "}, default_prompt_name="passage")
    with pytest.raises(InputError, match=r"default_prompt_name 'passage' is not one of the prompts"):
        st_llm2vec.load_model(str(path))


def test_a_text_or_prompt_that_is_not_valid_unicode_is_refused_naming_it(portable_dir):
    model = st_llm2vec.load_model(str(portable_dir))
    with pytest.raises(InputError, match=r"Input 2 holds a lone surrogate '\\ud800' at character 0"):
        model.encode(["fine", "a much longer text than the others", "\ud800abc"])
    with pytest.raises(InputError, match="The prompt holds a lone surrogate"):
        model.encode(["fine"], prompt="\udfff: ")
    with pytest.raises(InputError, match=r"The text 'x\\udc00'"):  # the module alone (as stock ST calls it)
        model[0].preprocess(["x\udc00"])


def test_export_of_a_dir_whose_config_json_is_not_json_names_the_file(portable_dir, tmp_path, capsys):
    path = shutil.copytree(portable_dir, tmp_path / "m")
    (path / "config.json").write_text("{not json")
    err = _cli_error(["export", str(path), str(tmp_path / "out")], capsys)
    assert f"{path / 'config.json'}:1:2: not valid JSON" in err


def test_export_into_a_folder_under_a_file_is_refused_before_any_work(portable_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    err = _cli_error(["export", str(portable_dir), str(tmp_path / "a-file" / "sub" / "out")], capsys)
    assert f"{tmp_path / 'a-file'} is a file, not a directory" in err


def test_export_into_a_folder_without_write_permission_is_refused_naming_it(portable_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from st_llm2vec import files

    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    if os.geteuid() == 0:  # root writes anywhere: the permission the check reads is what a user would have
        real = os.access
        monkeypatch.setattr(files.os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode))
    err = _cli_error(["export", str(portable_dir), str(locked / "out")], capsys)
    assert f"no permission to create anything in {locked}" in err
    monkeypatch.undo()
    # a failed mkdir past the check (a race, a read-only mount) is named too
    monkeypatch.setattr(files.tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "denied", kw["dir"])))
    with pytest.raises(NotPermittedError, match="cannot write .*out: denied"):
        files.temp_dir_beside(tmp_path / "free" / "out")


# --------------------------------------------------------------------------- options that cannot act together


def test_options_that_cannot_act_together_are_refused_before_work_starts(tiny_llm, portable_dir, tmp_path, capsys,
                                                                         monkeypatch):
    from st_llm2vec import build
    from st_llm2vec.embed.job import EmbedConfig
    from st_llm2vec.portable import PortableFormatError

    monkeypatch.setattr(build, "LLM2VecTransformer", lambda *a, **k: pytest.fail("the weights were loaded"))
    for kwargs in ({"pooling_mode": "weighted_mean"}, {"skip_instruction": False}, {"chat_template": "[INST] {{ x }}"}):
        with pytest.raises(PortableFormatError, match="format='portable' cannot be used here"):
            st_llm2vec.from_llm(str(tiny_llm("llama")), format="portable", **kwargs)
    for kwargs in ({"workers": 2}, {"gpus_per_worker": 1.0}, {"ray_address": "auto"}):
        with pytest.raises(InputError, match="only act.* with --engine ray"):
            EmbedConfig("m", "in", "out", **kwargs).check()
    with pytest.raises(InputError, match="--gpus-per-worker must be 0 or more"):
        EmbedConfig("m", "in", "out", engine="ray", gpus_per_worker=float("nan")).check()
    out = str(tmp_path / "out")
    assert "--converter is an option of --backend gguf" in _cli_error(
        ["export", str(portable_dir), out, "--converter", "c.py"], capsys)
    assert "--opset is an option of --backend onnx" in _cli_error(
        ["export", str(portable_dir), out, "--backend", "gguf", "--opset", "18"], capsys)
    assert "--quantize q8_0 is not a onnx quantization" in _cli_error(
        ["export", str(portable_dir), out, "--quantize", "q8_0"], capsys)
    for bad in ("nan", "0", "1.5"):
        assert "--min-cosine must be a cosine in (0, 1]" in _cli_error(
            ["export", str(portable_dir), out, "--min-cosine", bad], capsys)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a portable dir computes what stock does

ODD_TEXTS = ["", " ", "   ", "\n", "\t\n ", "\u3000", "x", ".", "\u200b", "e\u0301", "🙂" * 3, "word " * 400,
             "a\x00b", "\ud800abc", "abc\udfff", "Retrieve semantically similar text:"]


@pytest.fixture(scope="module")
def both(portable_dir):
    from sentence_transformers import SentenceTransformer

    return st_llm2vec.load_model(str(portable_dir)), SentenceTransformer(str(portable_dir))


def test_an_empty_text_of_a_portable_dir_is_stocks_zero_vector_not_its_bos_token(both):
    ours, stock = both
    assert not np.any(stock.encode([""])) and not np.any(ours.encode([""]))
    np.testing.assert_allclose(ours.encode(["", "two words"]), stock.encode(["", "two words"]), atol=1e-5)


def test_a_text_past_max_position_embeddings_is_cut_where_stock_cuts_it(both):
    ours, stock = both
    assert ours.max_seq_length == stock.max_seq_length == 256  # the tiny model's max_position_embeddings
    text = "x " * 600
    np.testing.assert_allclose(ours.encode([text]), stock.encode([text]), atol=1e-5)


@FAST
@given(texts=st.lists(st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=30),
                                st.text(alphabet=" \n\tab", max_size=12)), min_size=1, max_size=4),
       prompt=st.sampled_from([None, "", "query: ", "Retrieve: ", " "]))
def test_a_portable_dir_gives_stocks_vector_for_any_text_or_says_why(both, texts, prompt):
    """Empty, whitespace, lone surrogates, very long, prompt-only: ours equals stock SentenceTransformer(dir) where
    stock gives a vector, and is one of our errors where stock fails (a lone surrogate: a tokenizer TypeError)."""
    ours, stock = both
    try:
        expected = stock.encode(texts, prompt=prompt)
    except TypeError:
        with pytest.raises(UserError):
            ours.encode(texts, prompt=prompt)
        return
    np.testing.assert_allclose(ours.encode(texts, prompt=prompt), expected, atol=2e-5)


# --------------------------------------------------------------------------- every reader: a result or our error

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(["\ud800", "nan", "1e999", "-1", "0"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _mutations(valid: object) -> st.SearchStrategy[bytes]:
    """Random bytes; the valid file cut anywhere; the valid file with one field (or item) of any JSON value,
    NaN and Infinity written as Python's json writes them."""
    text = json.dumps(valid).encode()
    cut = st.integers(0, max(len(text) - 1, 0)).map(lambda n: text[:n])

    def replace(pair):
        key, value = pair
        if isinstance(valid, dict):
            return json.dumps({**valid, key: value}).encode()
        return json.dumps([{**valid[0], key: value}] if valid else [value]).encode()

    fields = list(valid if isinstance(valid, dict) else (valid[0] if valid else {"x": 0})) + ["extra"]
    return st.one_of(st.binary(max_size=200), cut, st.tuples(st.sampled_from(fields), JSON_VALUES).map(replace))


def _valid_files(portable_dir: Path) -> dict[str, object]:
    from st_llm2vec.embed.manifest import FORMAT

    found = {name: json.loads((portable_dir / name).read_text()) for name in
             ("config.json", "modules.json", "config_sentence_transformers.json", "tokenizer_config.json")}
    found["1_Pooling/config.json"] = json.loads((portable_dir / "1_Pooling" / "config.json").read_text())
    found["sentence_bert_config.json"] = {"max_seq_length": 128}
    found["0_WordWeights/config.json"] = {"vocab": ["<s>", "a"], "word_weights": {"<s>": 0.0}, "unknown_word_weight": 1}
    found["st_llm2vec_run.json"] = {"fingerprint": "ab", "global_step": 3, "max_steps": 10, "status": "finished"}
    found["st_llm2vec_checkpoint.json"] = {"global_step": 3, "fingerprint": "ab", "saved": "now"}
    found["trainer_state.json"] = {"global_step": 3}
    found["model.safetensors.index.json"] = {"metadata": {}, "weight_map": {"a.weight": "model-1.safetensors"}}
    found["llm2vec_config.json"] = {"pooling_mode": "mean", "max_length": 512, "doc_max_length": 400,
                                    "skip_instruction": True}
    found["adapter_config.json"] = {"peft_type": "LORA", "r": 8}
    found["2_Dense/config.json"] = {"in_features": 32, "out_features": 16, "bias": True}
    found["manifest.json"] = {
        "format": FORMAT, "model": {"path": "m", "fingerprint": "sha256:1"}, "rows_per_shard": 10, "rejected": 0,
        "vectors": {"dim": 32, "normalize": True, "prompt": {"name": None, "text": None}, "precision": "float32"},
        "input": {"fingerprint": "sha256:2", "text_field": "text", "id_field": "id"}, "complete": True,
        "shards": [{"file": "part-00000.parquet", "index": 0, "rows": 3, "bytes": 10, "sha256": "ff"}]}
    return found


def _check_reader(read, data: bytes, where: Path):
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(data)
    try:
        return read()
    except UserError:
        return None


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _file_types():
    """(declared file type, the key of its valid example in ``_valid_files``)."""
    from st_llm2vec import llm2vec_checkpoints, model_files
    from st_llm2vec.embed import manifest
    from st_llm2vec.recipe import run_record

    return [(model_files.HF_CONFIG, "config.json"), (model_files.MODULES, "modules.json"),
            (model_files.ST_CONFIG, "config_sentence_transformers.json"),
            (model_files.TOKENIZER_CONFIG, "tokenizer_config.json"), (model_files.POOLING_CONFIG, "1_Pooling/config.json"),
            (model_files.TRANSFORMER_CONFIG, "sentence_bert_config.json"),
            (model_files.WORD_WEIGHTS_CONFIG, "0_WordWeights/config.json"), (run_record.RUN_SCHEMA, "st_llm2vec_run.json"),
            (run_record.CHECKPOINT_SCHEMA, "st_llm2vec_checkpoint.json"),
            (run_record.TRAINER_STATE, "trainer_state.json"), (manifest.SCHEMA, "manifest.json"),
            (model_files.WEIGHT_INDEX, "model.safetensors.index.json"),
            (llm2vec_checkpoints.LLM2VEC_SCHEMA, "llm2vec_config.json"),
            (llm2vec_checkpoints.ADAPTER_SCHEMA, "adapter_config.json"),
            (model_files.MODULE_DIMENSIONS, "2_Dense/config.json")]


@pytest.mark.parametrize("file_type, example", _file_types(), ids=lambda x: getattr(x, "what", None) and x.name)
def test_every_declared_file_type_reads_any_bytes_as_a_checked_result_or_our_error(portable_dir, tmp_path, file_type,
                                                                                  example):
    valid = _valid_files(portable_dir)[example]
    assert file_type.read(_write(tmp_path / "valid", file_type.name, valid)) is not None

    @FAST
    @given(data=_mutations(valid))
    def check(data):
        result = _check_reader(lambda: file_type.read(tmp_path / "f"), data, tmp_path / "f" / file_type.name)
        assert result is None or _finite(result)

    check()


def _write(folder: Path, name: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))
    return folder


def test_rebuilding_a_portable_dir_from_damaged_files_gives_settings_or_our_error(portable_dir, tmp_path):
    """read_portable_dir, which from_llm follows for a portable dir: any one file damaged in any way."""
    from st_llm2vec.build import read_portable_dir

    valid = _valid_files(portable_dir)
    valid.pop("0_WordWeights/config.json")
    shutil.copytree(portable_dir / "0_WordWeights", tmp_path / "dir" / "0_WordWeights")
    for name in ("config.json", "modules.json", "config_sentence_transformers.json", "tokenizer_config.json",
                 "1_Pooling/config.json", "sentence_bert_config.json"):
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_text(json.dumps(valid[name]))
    assert read_portable_dir(str(tmp_path / "dir"))["max_seq_length"] == 128

    @FAST
    @given(name=st.sampled_from(sorted(n for n in valid if n in (
        "config.json", "modules.json", "config_sentence_transformers.json", "tokenizer_config.json",
        "1_Pooling/config.json", "sentence_bert_config.json"))), data=st.data())
    def check(name, data):
        original = (tmp_path / "dir" / name).read_bytes()
        settings_ = _check_reader(lambda: read_portable_dir(str(tmp_path / "dir")),
                                  data.draw(_mutations(valid[name])), tmp_path / "dir" / name)
        (tmp_path / "dir" / name).write_bytes(original)
        if settings_ is not None:
            assert settings_["max_seq_length"] is None or settings_["max_seq_length"] >= 1
            assert all(isinstance(p, (str, type(None))) for p in (settings_.get("prompts") or {}).values())

    check()


def test_the_embed_manifest_loads_as_a_manifest_or_our_error(portable_dir, tmp_path):
    from st_llm2vec.embed.manifest import Manifest

    manifest = _valid_files(portable_dir)["manifest.json"]
    assert Manifest.load(_write(tmp_path / "valid", "manifest.json", manifest)).rows == 3

    @FAST
    @given(data=_mutations(manifest))
    def check(data):
        loaded = _check_reader(lambda: Manifest.load(tmp_path / "o"), data, tmp_path / "o" / "manifest.json")
        assert loaded is None or loaded.rows >= 0

    check()


ROWS = st.lists(st.lists(st.one_of(st.text(max_size=6), JSON_VALUES.map(json.dumps)), min_size=0, max_size=4),
                max_size=4)


@FAST
@given(data=st.one_of(st.binary(max_size=200),
                      ROWS.map(lambda rows: "\n".join("\t".join(r) for r in rows).encode("utf-8", "surrogatepass")),
                      st.lists(st.dictionaries(st.sampled_from(["sentence1", "sentence2", "score", "label"]),
                                               JSON_VALUES, max_size=3), max_size=3).map(
                          lambda rows: "\n".join(map(json.dumps, rows)).encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".tsv", ".csv", ".jsonl"]))
def test_eval_task_files_read_as_finite_scored_pairs_or_our_error(tmp_path_factory, data, suffix):
    from st_llm2vec.eval.task_files import read_reranking, read_scored_pairs

    path = tmp_path_factory.mktemp("pairs") / f"f{suffix}"
    pairs = _check_reader(lambda: read_scored_pairs(path), data, path)
    assert pairs is None or all(math.isfinite(p.score) and isinstance(p.sentence1, str) for p in pairs)
    if suffix == ".jsonl":
        _check_reader(lambda: read_reranking(path), data, path)


@FAST
@given(qrels=st.binary(max_size=120) | ROWS.map(lambda rows: "\n".join("\t".join(r) for r in rows).encode(
    "utf-8", "surrogatepass")), corpus=st.binary(max_size=80) | st.just(b'{"_id": "d0", "text": "doc"}\n'))
def test_a_beir_dir_reads_as_judgements_or_our_error(tmp_path_factory, qrels, corpus):
    from st_llm2vec.eval.task_files import read_beir

    beir = tmp_path_factory.mktemp("beir")
    (beir / "queries.jsonl").write_text('{"_id": "q0", "text": "query"}\n')
    (beir / "corpus.jsonl").write_bytes(corpus)
    result = _check_reader(lambda: read_beir(beir), qrels, beir / "qrels" / "test.tsv")
    assert result is None or all(isinstance(g, int) for q in result[2].values() for g in q.values())


RECIPE_KEYS = st.sampled_from(["model_name_or_path", "output_dir", "learning_rate", "lora_r", "pooling_mode", "seed",
                               "training_args"])


def _yaml(data) -> bytes:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", "surrogatepass")


@FAST
@given(data=st.binary(max_size=200)
       | st.dictionaries(RECIPE_KEYS, JSON_VALUES, max_size=5).map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass"))
       | st.dictionaries(RECIPE_KEYS | st.integers() | st.booleans() | st.none(), JSON_VALUES, max_size=5).map(_yaml),
       suffix=st.sampled_from([".json", ".yaml"]))
@example(data=b"1: a\nb: c\n", suffix=".yaml").via("YAML reads a number key")
@example(data=b'{"training_args": true}', suffix=".json").via("a trainer block that is no mapping")
def test_a_recipe_config_reads_as_checked_arguments_or_our_error(tmp_path_factory, data, suffix):
    from st_llm2vec.recipe.arguments import read_arguments
    from st_llm2vec.recipe.stage_contrastive import ContrastiveArguments

    path = tmp_path_factory.mktemp("recipe") / f"c{suffix}"
    result = _check_reader(lambda: read_arguments(ContrastiveArguments, path), data, path)
    assert result is None or _finite(result[1])


@FAST
@given(lines=st.lists(st.one_of(st.binary(max_size=30), JSON_VALUES.map(
    lambda v: json.dumps({"text": v, "id": v}).encode("utf-8", "surrogatepass"))), max_size=4),
    suffix=st.sampled_from([".jsonl", ".json", ".txt", ".csv"]))
def test_embed_input_rows_are_texts_or_bad_rows_never_an_exception(tmp_path_factory, lines, suffix):
    from st_llm2vec.embed.inputs import Fields, InputFile, read_rows
    from st_llm2vec.schema import unicode_problem

    path = tmp_path_factory.mktemp("corpus") / f"c{suffix}"
    path.write_bytes(b"\n".join(lines))
    for row in read_rows(InputFile(str(path), path.name), Fields()):
        assert (row.error is None) == (isinstance(row.text, str) and isinstance(row.id, str))
        assert row.text is None or unicode_problem(row.text) is None


def test_the_model_files_eval_and_embed_size_by_are_read_through_their_schema(portable_dir, tmp_path):
    """eval's model detection and embed's shard sizing read config.json / modules.json checked: a damaged field is
    named, not a TypeError / AttributeError from deep inside (nor a damaged file taken for "not a model")."""
    from st_llm2vec.embed.encoding import estimated_dim
    from st_llm2vec.eval.models import _architectures, written_by_st_llm2vec

    assert estimated_dim(portable_dir, None) == 32 and estimated_dim(portable_dir, 8) == 8
    assert _architectures(tmp_path / "config.json") is None  # no config.json: not a model dir, said by the caller
    (tmp_path / "config.json").write_text('{"architectures": 5}')
    with pytest.raises(InputError, match=r"config.json: field architectures: expected a list of strings"):
        _architectures(tmp_path / "config.json")
    damaged = tmp_path / "damaged"
    shutil.copytree(portable_dir, damaged)
    _edit(damaged / "config.json", is_causal="no")
    with pytest.raises(InputError, match=r"damaged/config.json: field is_causal: expected true or false"):
        written_by_st_llm2vec(damaged)
    (damaged / "modules.json").write_text("[1]")
    with pytest.raises(InputError, match=r"modules.json: field \[0\]: expected an object"):
        estimated_dim(damaged, None)
