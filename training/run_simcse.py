"""Launcher for unsupervised SimCSE training, for torchrun / accelerate launch (never imported by the library).

    torchrun --nproc_per_node 8 training/run_simcse.py training/simcse/MetaLlama3.json [--set KEY=VALUE ...]

Same as `st-llm2vec simcse CONFIG ...`; see st_llm2vec/contrastive.py for the config keys.
"""

import sys

from st_llm2vec.contrastive import main

if __name__ == "__main__":
    sys.exit(main("simcse", sys.argv[1:]))
