"""`python -m unmask ...`: the same command line as `unmask ...`."""
import sys

from unmask.cli import main

if __name__ == "__main__":  # not when the server's engine process re-imports the main module (spawn)
    sys.exit(main())
