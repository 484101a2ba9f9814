import sys

from dalle2_fast.bench.cli import main

sys.exit(main())
