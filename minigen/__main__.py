"""`python -m minigen ...` is the `minigen` command."""
import sys

from .cli import main

sys.exit(main())
