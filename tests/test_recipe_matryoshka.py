"""st_llm2vec/recipe/matryoshka.py with losses.py: ``matryoshka_dims`` wraps a contrastive stage's loss in ST's
MatryoshkaLoss, the saved card lists the dev quality at each cut dimension, a stock ``SentenceTransformer(path,
truncate_dim=d)`` reproduces those figures, and bad dims are refused before anything loads."""

from __future__ import annotations

import pytest

from st_llm2vec.errors import InputError
from st_llm2vec.recipe.stage_contrastive import train_simcse
from conftest import simcse_config


def test_the_card_lists_dev_quality_at_each_dim_and_stock_truncate_dim_gives_those_figures(tiny_llm, corpus,
                                                                                             tmp_path):
    from sentence_transformers import SentenceTransformer

    from st_llm2vec import devdata
    from st_llm2vec.recipe.contrastive import dev_sts_evaluator, sts_scores

    data_dir = devdata.find_shared_data()
    out = tmp_path / "out"
    result = train_simcse(simcse_config(tiny_llm(), out, corpus, matryoshka_dims=[32, 16, 8],
                                        matryoshka_weights=[1, 0.5, 0.5], evaluator="sts", eval_max_pairs=20))
    assert set(result.matryoshka) == {"16", "8"}  # 32 is the full size: eval_after
    card = (out / "README.md").read_text()
    assert "MatryoshkaLoss" in card and '"truncate_dim": 16' in card and '"truncate_dim": 8' in card
    for dim in (16, 8):
        stock = SentenceTransformer(str(out), truncate_dim=dim, device="cpu")  # portable: stock modules
        assert stock.encode(["a river"]).shape == (1, dim)
        figures = sts_scores(dev_sts_evaluator(str(data_dir) if data_dir else None, 20, 16)(stock))
        card_figures = result.matryoshka[str(dim)]
        assert list(figures.values()) == pytest.approx(list(card_figures.values()), abs=1e-6)
        for name, value in card_figures.items():
            if name.endswith("_spearman_cosine"):
                assert f"{value:.4f}".rstrip("0") in card  # the card's table shows the same figure


@pytest.mark.parametrize("overrides, message", [
    ({"matryoshka_dims": [64, 16]}, "matryoshka_dims: 64 is more than the 32 dimensions of .*: use dims up to 32"),
    ({"matryoshka_dims": [16, 0]}, r"matryoshka_dims: expected a list of integers >= 1 \(or null\), got \[16, 0\]"),
    ({"matryoshka_dims": [16, 16]}, r"matryoshka_dims \[16, 16\] names a dimension twice"),
    ({"matryoshka_dims": [16, 8], "matryoshka_weights": [1]}, "matryoshka_weights has 1 weights for 2"),
    ({"matryoshka_weights": [1, 1]}, "matryoshka_weights is set without matryoshka_dims"),
    ({"matryoshka_dims": "16"}, r"matryoshka_dims: expected a list of integers >= 1 \(or null\), got '16'"),
])
def test_bad_dims_are_refused_before_anything_loads(overrides, message, tiny_llm, corpus, tmp_path):
    with pytest.raises(InputError, match=message):
        train_simcse(simcse_config(tiny_llm(), tmp_path / "out", corpus, **overrides))
    assert not (tmp_path / "out").exists()


def test_dims_from_the_command_line_and_yaml_strings_are_numbers(tmp_path):
    from st_llm2vec.recipe.arguments import read_arguments
    from st_llm2vec.recipe.contrastive_arguments import SupervisedArguments

    config = {"model_name_or_path": "m", "output_dir": str(tmp_path / "o"), "matryoshka_dims": ["64", "32"],
              "matryoshka_weights": ["1", "0.5"]}
    arguments, _ = read_arguments(SupervisedArguments, config)
    assert arguments.matryoshka_dims == [64, 32] and arguments.matryoshka_weights == [1.0, 0.5]
