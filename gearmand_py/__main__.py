"""``python -m gearmand_py``: the gearmand command (cli.main) on the main thread."""

from .cli import main

if __name__ == "__main__":
    main()
