import sys

from dalle2_fast.cli import console

sys.exit(console())
