"""`st-llm2vec supervised CONFIG [options]` for torchrun / accelerate launch (README, "Training"); not imported by the library."""
import sys

from st_llm2vec.cli import main

sys.exit(main(["supervised", *sys.argv[1:]], report_errors=True))
