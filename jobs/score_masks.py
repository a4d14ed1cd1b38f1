"""Ray job: `ray job submit --working-dir . -- python jobs/score_masks.py --model NAME=REF ... --output OUT`.

Same options as `reviewlm score`.
"""

import sys

from reviewlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
