"""Ray job: `ray job submit --working-dir . -- python jobs/recommend.py --catalog URI --queries URI --output OUT`.

Same options as `reviewlm recommend`.
"""

import sys

from reviewlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
