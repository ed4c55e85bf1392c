#!/usr/bin/env python
"""Write a transformers-4.44-loadable "view" of a transformers-5.x checkpoint.

    python benchmarks/llm2vec_view.py SRC DST [--copy] [--name-or-path NAME]
                                      [--verify-with PYTHON]

The official llm2vec 0.2.3 runs on transformers 4.44.2 / tokenizers 0.19
(benchmarks/llm2vec_env.sh).  A checkpoint saved by transformers 5.x does not
load there as is, or worse, loads *silently wrong*.  The view fixes that:

config.json
  * ``rope_parameters`` -> top-level ``rope_theta`` (+ ``rope_scaling`` for a
    non-default rope type).  4.44 ignores ``rope_parameters`` and would
    silently use rope_theta=10000.
  * ``dtype`` -> ``torch_dtype`` (4.44 does not read ``dtype``).
  * ``layer_types`` (5.x only) dropped; Qwen2's ``use_sliding_window`` and
    ``max_window_layers`` that 4.44 reads are kept.
  * Gemma: ``hidden_activation`` = ``hidden_act`` (4.44 ignores hidden_act
    for Gemma and always uses gelu_pytorch_tanh otherwise).
  * Llama/Qwen2: a ``head_dim`` other than hidden_size/num_heads cannot be
    expressed in 4.44 -> error.
  * ``_name_or_path`` is kept if SRC's config.json has it (llm2vec picks its
    instruct prompt format from it); ``--name-or-path`` sets it.
tokenizer.json
  * BPE ``merges`` as ``"a b"`` strings (tokenizers <0.20 cannot read the
    ``["a", "b"]`` pairs that tokenizers >=0.20 writes).
tokenizer_config.json
  * ``tokenizer_class: PreTrainedTokenizerFast`` (5.x writes e.g.
    ``TokenizersBackend``, unknown to 4.44), ``model_input_names: [input_ids,
    attention_mask]`` (no token_type_ids), 5.x-only keys (``backend``,
    ``is_local``, ``local_files_only``) dropped, ``extra_special_tokens``
    (a list in 5.x) -> ``additional_special_tokens``, chat_template.jinja ->
    ``chat_template``.
weights
  * ``*.safetensors`` (and the shard index) symlinked (``--copy`` copies);
    generation_config.json linked as is.

Only the standard library is needed to write the view.  ``--verify-with
PYTHON`` (the llm2vec venv's python) then checks it: the view's tokenizer in
4.44 must give the same input_ids as SRC's in this interpreter's transformers
(5.x), and 4.44's config must read the same rope_theta / dtype.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

# 5.x-only config keys that 4.44 either does not know or would misread.
DROP_CONFIG_KEYS = {"dtype", "rope_parameters", "layer_types"}
DROP_TOKENIZER_CONFIG_KEYS = {"backend", "is_local", "local_files_only", "extra_special_tokens"}
# Files of SRC that are passed through unchanged.
PASSTHROUGH = {"generation_config.json"}
VERIFY_TEXTS = [
    "A man is playing a guitar.",
    "Retrieve semantically similar text: !@#$%^&*()Two dogs are   running on the grass </s>",
    "  leading spaces, UPPER case, numbers 12345 and émojis 🙂",
    "Fine.",
]


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _dump(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert_config(cfg, name_or_path=None):
    """Return (config dict for 4.44, list of what was changed)."""
    cfg = dict(cfg)
    changes = []
    model_type = cfg.get("model_type")

    rope = cfg.get("rope_parameters")
    if rope is not None:
        if "rope_theta" not in rope:
            # per-layer-type rope (e.g. {"full_attention": {...}, ...}): not a 4.44 arch
            raise ValueError(f"cannot express rope_parameters={rope!r} for transformers 4.44")
        rope = dict(rope)
        theta = rope.pop("rope_theta")
        if "rope_theta" in cfg and cfg["rope_theta"] != theta:
            raise ValueError(f"rope_theta {cfg['rope_theta']} != rope_parameters.rope_theta {theta}")
        cfg["rope_theta"] = theta
        changes.append(f"rope_theta={theta} (from rope_parameters)")
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype == "default":
            cfg["rope_scaling"] = None
        else:
            rope.setdefault("rope_type", rtype)
            cfg["rope_scaling"] = rope
            changes.append(f"rope_scaling={rope}")

    dtype = cfg.get("dtype")
    if dtype is not None:
        if cfg.get("torch_dtype") not in (None, dtype):
            raise ValueError(f"torch_dtype {cfg['torch_dtype']} != dtype {dtype}")
        cfg["torch_dtype"] = dtype
        changes.append(f"torch_dtype={dtype} (from dtype)")

    if model_type in ("llama", "qwen2") and cfg.get("head_dim") is not None:
        default = cfg["hidden_size"] // cfg["num_attention_heads"]
        if cfg["head_dim"] != default:
            raise ValueError(
                f"{model_type}: head_dim {cfg['head_dim']} != hidden_size/num_attention_heads {default}; "
                "transformers 4.44 cannot load this model"
            )

    if model_type == "gemma":
        act = cfg.get("hidden_activation") or cfg.get("hidden_act")
        if act is not None and cfg.get("hidden_activation") != act:
            cfg["hidden_activation"] = act
            changes.append(f"hidden_activation={act} (from hidden_act)")

    for key in sorted(DROP_CONFIG_KEYS & cfg.keys()):
        del cfg[key]
        changes.append(f"dropped {key}")

    if name_or_path is not None:
        cfg["_name_or_path"] = name_or_path
        changes.append(f"_name_or_path={name_or_path}")
    return cfg, changes


def convert_tokenizer_json(tok):
    """BPE merges as "a b" strings.  Returns (tokenizer dict, changes)."""
    tok = dict(tok)
    model = dict(tok["model"])
    changes = []
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges and not isinstance(merges[0], str):
        out = []
        for pair in merges:
            a, b = pair
            if " " in a or " " in b:
                raise ValueError(f"BPE merge {pair!r} holds a space: tokenizers 0.19 cannot express it")
            out.append(f"{a} {b}")
        model["merges"] = out
        changes.append(f"{len(out)} BPE merges as 'a b' strings")
    tok["model"] = model
    return tok, changes


def convert_tokenizer_config(tc, chat_template=None):
    tc = dict(tc)
    changes = []
    extra = tc.get("extra_special_tokens")
    if isinstance(extra, list) and extra:
        add = list(tc.get("additional_special_tokens") or [])
        add += [t for t in extra if t not in add]
        tc["additional_special_tokens"] = add
        changes.append("extra_special_tokens -> additional_special_tokens")
    elif isinstance(extra, dict) and extra:
        # 4.4x-style named extras ({"image_token": "<img>"}): keep the tokens special.
        add = list(tc.get("additional_special_tokens") or [])
        add += [t for t in extra.values() if t not in add]
        tc["additional_special_tokens"] = add
        changes.append("extra_special_tokens -> additional_special_tokens")
    for key in sorted(DROP_TOKENIZER_CONFIG_KEYS & tc.keys()):
        del tc[key]
        changes.append(f"dropped {key}")
    if tc.get("tokenizer_class") != "PreTrainedTokenizerFast":
        changes.append(f"tokenizer_class {tc.get('tokenizer_class')} -> PreTrainedTokenizerFast")
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tc.get("model_input_names") != ["input_ids", "attention_mask"]:
        tc["model_input_names"] = ["input_ids", "attention_mask"]
        changes.append("model_input_names=[input_ids, attention_mask]")
    if chat_template is not None and "chat_template" not in tc:
        tc["chat_template"] = chat_template
        changes.append("chat_template from chat_template.jinja")
    return tc, changes


def _link(src, dst, copy):
    if os.path.lexists(dst):
        os.remove(dst)
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def make_view(src, dst, copy=False, name_or_path=None):
    """Write the view; return {file: [changes]}."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("SRC and DST must differ")
    os.makedirs(dst, exist_ok=True)
    report = {}

    cfg, report["config.json"] = convert_config(_load(os.path.join(src, "config.json")), name_or_path)
    _dump(cfg, os.path.join(dst, "config.json"))

    tj = os.path.join(src, "tokenizer.json")
    if not os.path.exists(tj):
        raise FileNotFoundError(f"{tj}: the view needs a fast tokenizer (tokenizer.json)")
    tok, report["tokenizer.json"] = convert_tokenizer_json(_load(tj))
    _dump(tok, os.path.join(dst, "tokenizer.json"))

    tcp = os.path.join(src, "tokenizer_config.json")
    tc = _load(tcp) if os.path.exists(tcp) else {}
    jinja = os.path.join(src, "chat_template.jinja")
    chat = open(jinja, encoding="utf-8").read() if os.path.exists(jinja) else None
    tc, report["tokenizer_config.json"] = convert_tokenizer_config(tc, chat)
    _dump(tc, os.path.join(dst, "tokenizer_config.json"))

    weights = []
    for name in sorted(os.listdir(src)):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json" or name in PASSTHROUGH:
            _link(os.path.join(src, name), os.path.join(dst, name), copy)
            if name.endswith(".safetensors"):
                weights.append(name)
        elif name == "special_tokens_map.json":
            _link(os.path.join(src, name), os.path.join(dst, name), True)
    if not weights:
        raise FileNotFoundError(f"no *.safetensors in {src}")
    report["weights"] = [("copied " if copy else "linked ") + w for w in weights]
    return report


_VERIFY_44 = r"""
import json, sys
from transformers import AutoConfig, AutoTokenizer
dst, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(dst)
cfg = AutoConfig.from_pretrained(dst)
print(json.dumps({
    "class": type(tok).__name__,
    "ids": [tok(t)["input_ids"] for t in texts],
    "keys": sorted(tok(texts[0]).keys()),
    "eos": tok.eos_token, "bos": tok.bos_token,
    "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling,
    "torch_dtype": str(cfg.torch_dtype).replace("torch.", ""),
}))
"""


def verify(src, dst, python, texts=VERIFY_TEXTS):
    """Compare SRC under this interpreter's transformers with DST under PYTHON's."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    cfg = AutoConfig.from_pretrained(src)
    rp = getattr(cfg, "rope_parameters", None) or {}
    want_theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    want = {
        "ids": [tok(t)["input_ids"] for t in texts],
        "eos": tok.eos_token,
        "bos": tok.bos_token,
        "rope_theta": want_theta,
        "torch_dtype": str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)).replace("torch.", ""),
    }
    out = subprocess.run(
        [python, "-c", _VERIFY_44, dst, json.dumps(texts)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"view does not load under {python}:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    problems = [f"{k}: 5.x {want[k]!r} vs 4.44 {got[k]!r}" for k in want if want[k] != got[k]]
    if got["keys"] != ["attention_mask", "input_ids"]:
        problems.append(f"tokenizer returns {got['keys']}")
    if problems:
        raise AssertionError("view differs from source:\n  " + "\n  ".join(problems))
    return got


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="checkpoint dir saved by transformers 5.x")
    ap.add_argument("dst", help="where to write the view")
    ap.add_argument("--copy", action="store_true", help="copy the weights instead of symlinking")
    ap.add_argument("--name-or-path", default=None, help="set config _name_or_path (llm2vec instruct formats)")
    ap.add_argument(
        "--verify-with",
        metavar="PYTHON",
        default=None,
        help="python of the llm2vec venv: check the view loads there and tokenizes like SRC does here",
    )
    args = ap.parse_args(argv)
    report = make_view(args.src, args.dst, copy=args.copy, name_or_path=args.name_or_path)
    for f, changes in report.items():
        print(f"{f}: " + ("; ".join(changes) if changes else "unchanged"))
    if args.verify_with:
        got = verify(args.src, args.dst, args.verify_with)
        print(f"verified under {args.verify_with}: same input_ids on {len(VERIFY_TEXTS)} texts, "
              f"rope_theta={got['rope_theta']}, torch_dtype={got['torch_dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
