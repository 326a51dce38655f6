"""`python -m studio.batch INPUT_DIR OUTPUT_DIR --prompt "…"`: studio/serving/batch.py."""

import sys

from studio.serving.batch import main

if __name__ == "__main__":
    sys.exit(main())
