#!/usr/bin/env python
"""Launcher for MNTP training, the same as ``st-llm2vec mntp CONFIG [options]``.

    python training/run_mntp.py training/mntp/tiny.json
    torchrun --nproc_per_node 8 training/run_mntp.py training/mntp/MetaLlama3.json
    accelerate launch training/run_mntp.py training/mntp/Mistral.json --resume-from-checkpoint

Not imported by the library: it only forwards its arguments to the CLI.
"""

import sys

from st_llm2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(["mntp", *sys.argv[1:]], report_errors=True))
