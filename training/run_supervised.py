"""Launcher for supervised contrastive training, for torchrun / accelerate launch (never imported by the library).

    torchrun --nproc_per_node 8 training/run_supervised.py training/supervised/MetaLlama3.json [--set KEY=VALUE ...]

Same as `st-llm2vec supervised CONFIG ...`; see st_llm2vec/contrastive.py for the config keys.
"""

import sys

from st_llm2vec.contrastive import main

if __name__ == "__main__":
    sys.exit(main("supervised", sys.argv[1:]))
