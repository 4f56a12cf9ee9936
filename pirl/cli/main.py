"""`pirl` entry point (placeholder until the CLI lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("pirl: the CLI is not built yet", file=sys.stderr)
    return 2
