"""st_llm2vec/recipe/keys.py, config.py with arguments.read_arguments: a training config (a JSON / YAML file or a dict, plus
command-line overrides) is read with llm2vec's key names and checked, value by value, before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_llm2vec.recipe.config import ConfigError
from st_llm2vec.recipe.arguments import read_arguments
from st_llm2vec.recipe.contrastive_arguments import ARGUMENTS
from st_llm2vec.recipe.stage_contrastive import train_simcse
from st_llm2vec.recipe.stage_mntp import MNTPArguments, train_mntp
from conftest import REPO, corpus_lines, mntp_config, simcse_config
from conftest import mntp_recipe as recipe


def test_the_config_is_checked_before_anything_loads(tmp_path, corpus):
    missing_model = str(tmp_path / "no-model-here")
    config = tmp_path / "mntp.json"
    config.write_text(json.dumps(mntp_config(Path(missing_model), tmp_path / "out", lora_r="abc", learning_rate="fast")))
    with pytest.raises(ConfigError, match=r"mntp\.json: 2 invalid values: lora_r: expected an integer >= 1, got 'abc'; "
                                          r"learning_rate: expected a number >= 0, got 'fast'"):
        train_mntp(str(config))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^config: lora_dropout: expected a number >= 0 and < 1"):
        train_simcse(simcse_config(Path(missing_model), tmp_path / "out", corpus, lora_dropout=1.5))
    yaml_config = tmp_path / "simcse.yaml"
    yaml_config.write_text("model_name_or_path: m\noutput_dir: o\nlearning_rate: 1e-4\nmax_steps: [3\n")
    with pytest.raises(ConfigError, match=r"simcse\.yaml:5:1: invalid YAML"):
        train_simcse(str(yaml_config))
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "model_name_or_path": "m",\n  "lora_r": 4,\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json:4:1: invalid JSON"):
        train_mntp(str(broken))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="output_dir .* exists and is not a directory"):
        train_mntp(mntp_config(Path(missing_model), a_file))
    with pytest.raises(FileNotFoundError, match="train_file"):
        train_mntp(mntp_config(Path(missing_model), tmp_path / "out", train_file=str(tmp_path / "missing.txt")))


def test_bad_torch_dtype_is_refused_in_both_training_stages(tiny_llama, tmp_path):
    from st_llm2vec.recipe.stage_contrastive import train_simcse

    with pytest.raises(ValueError, match="is not a torch dtype .use bfloat16, float16, float32 or auto"):
        train_mntp(recipe(tiny_llama, tmp_path / "mntp", torch_dtype="bf16"))
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(corpus_lines()[:8]))
    simcse = dict(model_name_or_path=str(tiny_llama), output_dir=str(tmp_path / "simcse"), use_cpu=True,
                  dataset_name="Wiki1M", dataset_file_path=str(corpus), evaluator="none", torch_dtype="float33")
    with pytest.raises(ValueError, match="'float33' is not a torch dtype"):
        train_simcse(simcse)
    assert not (tmp_path / "simcse").exists()


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="Unknown MNTP config key"):
        read_arguments(MNTPArguments, {"model_name_or_path": "x", "output_dir": "y", "mlm_probabilty": 0.2})
    config, training = read_arguments(MNTPArguments, json.loads((REPO / "training" / "mntp" / "MetaLlama3.json").read_text()))
    assert training["eval_strategy"] == "steps" and config.lora_r == 16


def test_yaml_config_and_relative_paths(tmp_path):
    (tmp_path / "corpus.txt").write_text("some text\n")
    path = tmp_path / "mntp.yaml"
    path.write_text("model_name_or_path: m\ntrain_file: corpus.txt\noutput_dir: out\nlora_r: 4\nevaluation_strategy: 'no'\n")
    config, training = read_arguments(MNTPArguments, path)
    assert config.train_file == str(tmp_path / "corpus.txt") and config.lora_r == 4
    assert training == {"output_dir": "out", "eval_strategy": "no"}


def test_llm2vec_style_configs_parse():
    configs = sorted((REPO / "training").glob("simcse/*.json")) + sorted((REPO / "training").glob("supervised/*.json"))
    assert {p.parent.name for p in configs} == {"simcse", "supervised"}
    for path in configs:
        arguments, args = read_arguments(ARGUMENTS[path.parent.name], json.loads(path.read_text()))
        assert arguments.model_name_or_path and args["output_dir"]
    with pytest.raises(ValueError, match=r"lora_rank"):
        read_arguments(ARGUMENTS["simcse"], {"model_name_or_path": "m", "output_dir": "o", "lora_rank": 8})


def test_gather_across_devices_reads_true_false_and_auto_from_files_and_the_command_line():
    import argparse

    from st_llm2vec.recipe.config import ConfigError
    from st_llm2vec.recipe.command import overrides_from_cli, parent_parser

    simcse = ARGUMENTS["simcse"]
    base = {"model_name_or_path": "m", "output_dir": "o"}
    for given, expected in (("false", False), ("True", True), ("AUTO", "auto"), (False, False), (None, None)):
        arguments, _ = read_arguments(simcse, {**base, "gather_across_devices": given})
        assert arguments.gather_across_devices == expected
    with pytest.raises(ConfigError, match="gather_across_devices: expected true, false or 'auto'"):
        read_arguments(simcse, {**base, "gather_across_devices": "maybe"})
    cli = argparse.ArgumentParser(parents=[parent_parser(simcse)]).parse_args(["c.json", "--gather_across_devices", "false"])
    arguments, _ = read_arguments(simcse, base, overrides_from_cli(simcse, cli))
    assert arguments.gather_across_devices is False  # the string "false" would gather (bool("false") is True)


def test_cli_overrides_and_errors(tiny_llm, tmp_path, capsys):
    from st_llm2vec.cli import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_name_or_path": str(tiny_llm()), "output_dir": str(tmp_path / "o")}))
    with pytest.raises(FileNotFoundError, match="dataset_file_path|echo"):
        main(["supervised", str(cfg), "--set", "dataset_name=E5", "--dataset-file-path", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="save_mode"):
        main(["simcse", str(cfg), "--set", 'save_mode="both"'])
