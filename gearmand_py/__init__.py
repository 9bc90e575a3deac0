"""gearmand-py: a drop-in Python replacement for the C Gearman job server."""

__version__ = "0.1.0"
#: The C gearmand release whose wire, admin and CLI behaviour this package reproduces.
#: Reported by the admin ``version`` command and ``gearmand -V``.
COMPAT_VERSION = "1.1.20"
