"""moto server for the test run, one request at a time.

`moto_server` serves requests on threads, and moto 5.2.5's SQS FIFO receive is not
thread-safe: two ReceiveMessage calls that overlap can both hand out messages of one message
group, which real SQS never does (DESIGN.md invariant 5). Serving one request at a time makes
moto's FIFO semantics exact. Nothing long-polls against it: the tests' SQS client waits with
short polls (SqsQueue::with_client_side_wait), so no request holds the server.

Usage: python moto-server.py HOST PORT
"""

import signal
import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
host, port = sys.argv[1], int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, request_handler=MotoRequestHandler)
