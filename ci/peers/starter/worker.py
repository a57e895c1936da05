#!/usr/bin/python3
"""An HTTP worker for Server::Starter (`start_server`) that names its pid in every reply.

It serves on the listening socket start_server passes down (SERVER_STARTER_PORT, the
`host:port=fd` form start_server documents). On SIGTERM, which start_server sends to the old
worker once the new one has run for `--interval` seconds, it either drains (`--drain`, the
default: stops accepting, finishes the requests it holds, up to `--drain-timeout-ms`) or dies at
once (`--no-drain`: the signal's default action, cutting what it holds).
"""

import argparse
import http.server
import os
import signal
import socket
import sys
import threading
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--drain", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--drain-timeout-ms", type=int, default=5000)
    p.add_argument("--pid-form", choices=["handoff", "x-pid", "colon"], default="handoff")
    args = p.parse_args()

    ports = os.environ.get("SERVER_STARTER_PORT")
    if not ports:
        sys.exit("worker.py: SERVER_STARTER_PORT is not set: start it under start_server")
    fd = int(ports.split(";")[0].rsplit("=", 1)[1])
    listener = socket.socket(fileno=fd)

    draining = threading.Event()
    pid = os.getpid()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 1  # an idle keep-alive connection is closed after this long

        def do_GET(self):
            delay = args.delay_ms
            if "delay=" in self.path:
                delay = int(self.path.split("delay=", 1)[1].split("&", 1)[0])
            time.sleep(delay / 1000)
            if args.pid_form == "colon":
                body = b"pid:%d\n" % pid
            elif args.pid_form == "x-pid":
                body = b"ok\n"
            else:
                body = b"pid=%d\n" % pid
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if args.pid_form == "x-pid":
                self.send_header("X-PID", str(pid))
            if draining.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.daemon_threads = False
    server.block_on_close = True

    # The handler only sets a flag: a Python signal handler runs in the main thread between two
    # bytecodes, possibly inside threading's own locks (starting a connection's thread), so
    # anything that takes a lock there (a Thread, an Event) can deadlock the worker.
    term = []
    if args.drain:
        signal.signal(signal.SIGTERM, lambda _sig, _frame: term.append(True))
    print(f"worker ready pid={pid}", file=sys.stderr, flush=True)
    server.timeout = 0.05
    while not term:
        server.handle_request()
    draining.set()
    # Draining: stop accepting (start_server and the new worker keep the socket open), then
    # wait for the requests in flight, up to the deadline.
    listener.close()
    closer = threading.Thread(target=server.server_close, daemon=True)
    closer.start()
    closer.join(args.drain_timeout_ms / 1000)
    print(f"worker pid={pid} drained" if not closer.is_alive() else "drain deadline passed", file=sys.stderr, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
