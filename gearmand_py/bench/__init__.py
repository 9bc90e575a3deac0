"""gearmand-bench: the -t sweep benchmark shipped with gearmand-py.

It starts servers itself on loopback (this project's ``gearmand`` at each ``-t`` and any
other server command, such as C gearmand), drives them with its own raw-protocol load
generator (a C program, ``loadgen.c``, built on first use; a Python one as the fallback)
and reports medians over interleaved rounds, with the server's CPU per job and which side
was saturated.

Modules: :mod:`.cli` (options, entry point), :mod:`.runner` (the sweep), :mod:`.workloads`
(one function per workload), :mod:`.native` (builds and runs ``loadgen.c``), :mod:`.gen`
(the Python generator processes), :mod:`.proto` (packets, independent of the server's
codec), :mod:`.servers` (process control), :mod:`.report`.
"""
