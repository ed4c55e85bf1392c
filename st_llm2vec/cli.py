"""``st-llm2vec``: one command per recipe step; each lives in its own module, imported on use."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). The module defines add_arguments_<name>(parser) and run_<name>(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("st_llm2vec.quickstart", "offline demo on SmolLM2-135M: baseline → bi → MNTP → SimCSE"),
    "fetch-smollm2": ("st_llm2vec.quickstart", "convert the SmolLM2-135M-Instruct GGUF to a HF checkpoint (cached)"),
    "convert": ("st_llm2vec.export", "HF causal LM or llm2vec checkpoint stack → standalone ST model dir"),
    "push": ("st_llm2vec.export", "push an exported ST model dir to the Hugging Face Hub"),
    "mntp": ("st_llm2vec.mntp", "masked next-token prediction training from a JSON/YAML config"),
    "simcse": ("st_llm2vec.contrastive", "unsupervised SimCSE training from a JSON/YAML config"),
    "supervised": ("st_llm2vec.contrastive", "supervised contrastive training with hard negatives"),
}


def _usage() -> str:
    lines = ["usage: st-llm2vec COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `st-llm2vec COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"st-llm2vec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    parser = argparse.ArgumentParser(prog=f"st-llm2vec {name}", description=COMMANDS[name][1])
    getattr(module, f"add_arguments_{attr}")(parser)
    args = parser.parse_args(argv[1:])
    return int(getattr(module, f"run_{attr}")(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
