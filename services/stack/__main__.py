"""The embedded stack: `up` (make up), `demo` (make demo), `settings` (the README's settings tables)."""

import argparse
import sys

from services.runtime.settings import InvalidSettings, read_settings
from services.stack import demo, settings_doc, supervisor
from services.stack.topology import StackSettings


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "demo", "settings"])
    parser.add_argument("--write", action="store_true", help="with settings: rewrite README.md's tables")
    args = parser.parse_args()
    try:
        if args.command == "up":
            return supervisor.run(read_settings(StackSettings))
        if args.command == "settings":
            if args.write:
                settings_doc.write_readme()
            else:
                print(settings_doc.render())
            return 0
        return demo.main()
    except InvalidSettings as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
