"""`python -m modelscope_mossformer ...` runs the `mossformer` command."""
import sys

from .cli import main

sys.exit(main())
