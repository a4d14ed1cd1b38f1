"""Ray job: `ray job submit --working-dir . -- python jobs/finetune.py --data URI... --output OUT`.

Same options as `reviewlm train`.
"""

import sys

from reviewlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
