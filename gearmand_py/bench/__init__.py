"""gearmand-bench: the -t sweep benchmark shipped with gearmand-py.

It starts servers itself on loopback (this project's ``gearmand`` at each ``-t`` and any
other server command, such as C gearmand), drives them with its own raw-protocol load
generator (several processes, pipelining) and reports medians over interleaved rounds.

Modules: :mod:`.cli` (options, entry point), :mod:`.runner` (the sweep), :mod:`.workloads`
(one function per workload), :mod:`.gen` (generator processes), :mod:`.proto` (packets,
independent of the server's codec), :mod:`.servers` (process control), :mod:`.report`.
"""
