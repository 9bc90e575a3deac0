"""``python -m gearmand_py.bench``: same as the ``gearmand-bench`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
