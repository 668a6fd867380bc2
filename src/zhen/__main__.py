"""`python -m zhen …` is the same as the `zhen` command."""

from zhen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
