"""Ray job: the whole study in one command.

    ray job submit --working-dir . -- python jobs/pipeline.py s3://bucket/reviews/ --output s3://bucket/study
    ray job submit --working-dir . -- python jobs/pipeline.py --demo --output s3://bucket/demo

Same options as `reviewlm pipeline`.
"""

import sys

from reviewlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
