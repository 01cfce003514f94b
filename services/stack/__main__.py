"""The embedded stack: `python -m services.stack up` (make up) or `python -m services.stack demo` (make demo)."""

import argparse
import sys

from services.stack import demo, supervisor
from services.stack.topology import StackSettings


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "demo"])
    args = parser.parse_args()
    if args.command == "up":
        return supervisor.run(StackSettings())
    return demo.main()


if __name__ == "__main__":
    sys.exit(main())
