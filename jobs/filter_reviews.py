"""Ray job: `ray job submit --working-dir . -- python jobs/filter_reviews.py INPUT... --output OUT`.

Same options as `reviewlm filter`.
"""

import sys

from reviewlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
