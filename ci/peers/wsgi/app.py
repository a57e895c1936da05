"""A WSGI app that names the pid of the worker that served each request (gunicorn, uWSGI).

The environment sets its behaviour: PEER_DELAY_MS (the time a request takes; a `delay=<ms>`
query parameter overrides it) and PEER_PID_FORM, how the reply names the pid: `handoff` (the
default; body `pid=N`), `x-pid` (header `X-PID: N`), `colon` (body `pid:N`).
"""

import os
import time
from urllib.parse import parse_qs

DELAY_MS = int(os.environ.get("PEER_DELAY_MS", "0"))
PID_FORM = os.environ.get("PEER_PID_FORM", "handoff")


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    delay = int(query.get("delay", [DELAY_MS])[0])
    if delay:
        time.sleep(delay / 1000)
    pid = os.getpid()
    headers = [("Content-Type", "text/plain")]
    if PID_FORM == "x-pid":
        body = b"ok\n"
        headers.append(("X-PID", str(pid)))
    elif PID_FORM == "colon":
        body = b"pid:%d\n" % pid
    else:
        body = b"pid=%d\n" % pid
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body]
