"""``python -m captioner.serving.jobs DB JOB_ID RUN_DIR MODELS_DIR``: one job's worker process
(started by `JobRunner`)."""

import sys

from .worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
