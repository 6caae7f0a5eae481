"""moto server for the test run, one request at a time.

`moto_server` serves requests on threads, and moto 5.2.5's SQS FIFO receive is not
thread-safe: two ReceiveMessage calls that overlap can both hand out messages of one message
group, which real SQS never does (DESIGN.md invariant 5). Serving one request at a time makes
moto's FIFO semantics exact. Nothing long-polls against it: the tests' SQS client waits with
short polls (SqsQueue::with_client_side_wait), so no request holds the server.

It also reads the clock faster. moto evaluates every queued message's visibility, through
`unix_time()` (datetime arithmetic), several times per request, so one request costs time in
proportion to the queue depth and a 2,000-message queue takes about a second per request.
`unix_time()` without an argument is the current POSIX time, which `time.time()` gives
directly: same values, much less work.

Usage: python moto-server.py HOST PORT
"""

import signal
import sys
import time

import moto.core.utils
import moto.sqs.models

_unix_time = moto.core.utils.unix_time


def unix_time(dt=None):
    return time.time() if dt is None else _unix_time(dt)


def unix_time_millis(dt=None):
    return unix_time(dt) * 1000.0


for module in (moto.core.utils, moto.sqs.models):
    module.unix_time = unix_time
    module.unix_time_millis = unix_time_millis

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
host, port = sys.argv[1], int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)
