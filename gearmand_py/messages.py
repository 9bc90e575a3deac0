"""The thread protocol: every message that crosses threads, who sends it, and to which inbox.

Plain ints and tuples only, so the hot path pays nothing for them.  No thread imports
another thread's module to talk to it; each imports the names it needs from here.

Threads (``/proc/PID/task``: 1, 2 or N+2 of them; one more with a persistent queue)::

    -t 0     main   one IOLoop: accepts, does I/O and runs the Processor inline
    -t 1     main   Listener: accepts and hands sockets to io-1
             io-1   IOLoop: I/O, runs the Processor inline
    -t N>=2  main   Listener
             io-K   IOLoop (K = 1..N): I/O only
             proc   ProcessorThread: runs the Processor, which owns every job table
    -q X     store  StoreThread (store.py): the queue backend, only when ``-q`` names a
                    real store (not builtin); any ``-t``

Inboxes.  Every message is a tuple whose first element is its kind.

* an I/O thread's ``Mailbox`` (mailbox.py: a ``SimpleQueue`` plus a wake pipe that the
  loop's epoll watches; a wake byte is written only when the inbox goes from empty to
  non-empty):
    - ``(REPLIES, [Reply, ...], credit)``  proc -> io-K, once per processing round that
      produced replies for that thread's connections; ``credit`` is the input bytes of
      io-K's EVENTS handled since the last credit (inbound flow control, below);
    - ``(CREDIT, credit)``               proc -> io-K, after a round without replies for
      io-K whose handled input reached ``CREDIT_MIN`` bytes;
    - ``(ADOPT, conn_id, sock, addr, port)``  main (Listener) -> io-K, a new connection
      accepted on the listening socket whose ``Port`` (protocol + TLS) is given;
    - ``(CALL, fn)``                     any thread -> io-K: run ``fn`` there (at ``-t 0``
      and ``-t 1`` that is the processing thread: graceful stop, signals at ``-t 0``);
    - ``(STOP,)``                        main -> io-K: flush what is held, close, return;
    - ``(STORED, [Outcome])``            store -> io-K, only at ``-t 0``/``-t 1`` (io-K runs
      the processor there): the outcome of the store units of one commit.
* the processing thread's inbox (``-t N>=2``; a bare ``SimpleQueue``: the thread blocks in
  ``get(timeout=next timer)``, so no wake pipe):
    - ``(EVENTS, io_id, Round, nbytes)``  io-K -> proc, once per selector round with
      events; ``nbytes`` is the input read in that round;
    - ``(CALL, fn)``                     main -> proc (graceful stop arms itself there);
    - ``(STOP,)``                        main -> proc: send the last replies, return;
    - ``(STORED, [Outcome])``            store -> proc, as above, at ``-t N>=2``.
* the store thread's inbox (with ``-q`` other than builtin; a bare ``SimpleQueue``: the
  thread blocks in ``get``):
    - ``(STORE, unit_id, [StoredJob], [(unique, function)], deadline)``  processing
      thread -> store, once per processing round that stored or finished background jobs:
      the adds and the dones of that round (a "unit"), and the ``time.monotonic()`` after
      which its submitters have been refused.  The store thread takes every unit queued
      when it wakes and writes them as ONE commit (group commit), dones before adds; the
      adds of a unit whose deadline has passed before that commit starts are not written;
    - ``(STOP,)``                        main -> store: commit what is queued, return.
* the main thread's ``Mailbox`` (``-t >= 1``; at ``-t 0`` the single loop's mailbox):
    - ``(CALL, fn)``                     signal handlers, crashed threads, the graceful-stop
      hook -> main (``Server.post``);
    - ``(STOP,)``  is never sent there: ``Server.stop`` clears the running flag via CALL.

Inbound flow control (``-t N>=2``).  An I/O thread counts the input bytes it has posted in
EVENTS and not yet had credited back; while that exceeds ``INBOUND_HIGH`` it reads no
socket and waits on its mailbox (handling replies and credit) until the processing thread
catches up, so a peer that sends faster than the processing thread works cannot queue
unbounded input in between.  Credit rides on REPLIES, or comes as CREDIT once at least
``CREDIT_MIN`` bytes are owed (so an I/O thread is never left waiting: what is never sent
is below ``CREDIT_MIN`` < ``INBOUND_HIGH``).

Events.  A connection's codec turns bytes into ``Event`` tuples ``(cmd, is_request_magic,
args)``.  ``cmd`` > 0 is a Gearman command number (1..42); the pseudo-commands below share
that number space and are all <= 0.  ``ConnEvents`` is one connection's events from one
read; a ``Round`` is the list of them from one selector round of one I/O thread.

Replies.  The processor answers with ``Reply`` tuples ``(conn_id, packet)``; a packet of
``None`` means "close this connection once its output is flushed", and PAUSE_READ /
RESUME_READ switch reading of that connection off and on.  A packet that is a tuple is a
``snapshot.Snapshot`` (plain ints, strings and tuples) answering a SNAPSHOT event; the
connection's codec renders it into response bytes on the I/O thread.

Metrics (``--metrics-port``, protocol/metrics.py).  The metrics codec turns ``GET /metrics``,
``/status.json`` and ``/healthz`` into a SNAPSHOT event whose one argument is the VIEW_*
asked for; the processor answers with a Snapshot of the engine's counters and state.
Metrics connections are not Gearman peers: no CONNECT/CLOSED reaches the processor for
them.  Each I/O thread counts bytes and connections itself and, while the metrics port is
on, reports its totals once a second as an IO_STATS event (conn_id 0) in its next round;
the processor keeps the latest report of every I/O thread for the next snapshot.

Store units.  A unit's ``Outcome`` is ``(unit_id, error, refused)``: ``error`` is None when
the unit committed, else one line saying why nothing of it was stored; ``refused`` maps
the index of an add the backend refused on its own (e.g. a key the store cannot hold) to
the reason, the rest of the unit being stored.  The processing thread answers the unit's
background submits (JOB_CREATED, or ERROR QUEUE_ERROR) only then, and queues its jobs for
workers only then (engine.py, "store units").

Backpressure.  When the output waiting for a connection passes the I/O thread's high-water
mark it reports CONGESTED; the processing thread then pauses (PAUSE_READ) the workers whose
jobs stream to that client (they may live on other I/O threads), or, for a job that other
clients share, fails the slow client out of that job.  Below the low-water mark the I/O
thread reports DRAINED and the workers are resumed.  A client that stays congested longer
than ``--client-stall-timeout`` is closed by its I/O thread (CLOSED follows).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

# ---- message kinds (first element of every inbox message) ------------------------------
EVENTS = 0      # (EVENTS, io_id, Round, nbytes)          io-K -> proc
REPLIES = 1     # (REPLIES, [Reply], credit)              proc -> io-K
ADOPT = 2       # (ADOPT, conn_id, sock, (ip, port), Port) main -> io-K
CALL = 3        # (CALL, fn)                              any -> main, io-K, proc
STOP = 4        # (STOP,)                                 main -> io-K, proc, store
STORE = 5       # (STORE, unit_id, [StoredJob], [(unique, function)], deadline)  proc -> store
STORED = 6      # (STORED, [Outcome])                     store -> proc (io-K at -t 0/1)
CREDIT = 7      # (CREDIT, credit)                        proc -> io-K

# ---- inbound flow control at -t N >= 2 (bytes) -------------------------------------------
INBOUND_HIGH = 8 * 1024 * 1024   # posted and not yet credited: stop reading above this
CREDIT_MIN = 1024 * 1024         # owed credit sent without replies from this much on

# ---- event pseudo-commands (the codec's and the I/O loop's; real commands are > 0) ----
TEXT = 0            # an admin text line; args: its tokens              (codec)
PROTOCOL_ERROR = -1  # unparseable input; args: (message,); always last  (codec)
CONNECT = -2        # a new connection; args: (fd, ip, port)            (I/O loop)
CLOSED = -3         # the peer closed or the I/O loop dropped it; args: ()  (I/O loop)
CONGESTED = -4      # output waiting for the peer passed the high-water mark  (I/O loop)
DRAINED = -5        # ... and fell back under the low-water mark            (I/O loop)
SNAPSHOT = -6       # a metrics request; args: (VIEW_*,)                 (metrics codec)
IO_STATS = -7       # an I/O thread's totals, conn_id 0; args: snapshot.IoStats  (I/O loop)

# ---- what a SNAPSHOT event asks for (its one argument) ---------------------------------
VIEW_METRICS = 0    # GET /metrics: every counter and gauge
VIEW_STATUS = 1     # GET /status.json: the same plus the workers and their functions
VIEW_HEALTH = 2     # GET /healthz: accepting, store answering, not shutting down

# ---- flow control: a Reply whose packet is one of these ints (proc -> io-K) ------------
PAUSE_READ = 0      # stop reading this connection: a client it feeds is congested
RESUME_READ = 1     # read it again

Event = Tuple[int, bool, Tuple[Any, ...]]
ConnEvents = Tuple[int, List[Event]]
Round = List[ConnEvents]
Reply = Tuple[int, Union[bytes, None, int, Tuple[Any, ...]]]
Outcome = Tuple[int, Optional[str], Dict[int, str]]
#: The error of a unit not committed by its deadline (store thread and engine alike).
OVERDUE = "{queue}: store did not answer within {timeout:g} s"
