"""Loaded (via PYTHONPATH) only by tests/test_thread_death.py's server processes.

Makes a thread of the server die the way a bug would: a BaseException escaping its loop.
The admin line ``crash-proc`` kills the processing thread; a read containing
``crash-io`` kills the I/O thread that owns the connection.
"""

from gearmand_py import iothread, processor


class InjectedCrash(BaseException):
    pass


_handle = processor.Processor.handle
_read = iothread.IOLoop._read


def handle(self, io_id, rnd):  # type: ignore[no-untyped-def]
    for _conn_id, events in rnd:
        for _cmd, _is_req, args in events:
            if args and args[0] == b"crash-proc":
                raise InjectedCrash("injected crash in the processing thread")
    return _handle(self, io_id, rnd)


def read(self, conn):  # type: ignore[no-untyped-def]
    data = conn.sock.recv(65536, 2)   # MSG_PEEK
    if b"crash-io" in data:
        raise InjectedCrash("injected crash in an I/O thread")
    return _read(self, conn)


processor.Processor.handle = handle
iothread.IOLoop._read = read
