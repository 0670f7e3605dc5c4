#!/usr/bin/env python3
"""A small HTTP server that can be reloaded by handoff without dropping a connection.

It takes its listening socket from systemd-style socket activation (what handoff does), says
READY=1 when it is ready to serve, and drains gracefully on SIGTERM. Standard library only.

    handoff --listen 127.0.0.1:8080 -- python3 examples/python/server.py
"""
import argparse
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SD_LISTEN_FDS_START = 3  # inherited sockets are fds 3, 4, ... (we use only the first one)
GENERATION = os.environ.get("HANDOFF_GENERATION", "?")
draining = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response needs a Content-Length
    timeout = 5  # close idle keep-alive connections after 5 s (this also bounds the drain)
    wbufsize = -1  # buffer each response, so headers and body leave in one packet

    def do_GET(self):
        body = f"Hello from generation {GENERATION} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if draining:  # we are going away: ask the client to reconnect (to the new generation)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # keep stderr quiet; handoff writes its own logs there


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True

    @classmethod
    def adopt(cls, sock):
        """A server on an already bound and listening socket."""
        server = cls(sock.getsockname(), Handler, bind_and_activate=False)
        server.socket.close()  # the one socketserver made for us and we do not need
        server.socket = sock
        return server


def inherited_socket():
    """The listening socket passed by handoff/systemd, or None if we were started alone."""
    if "LISTEN_FDS" not in os.environ:
        return None
    # Like sd_listen_fds(): the fds are ours only if LISTEN_PID names this very process.
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"LISTEN_PID={os.environ.get('LISTEN_PID')} is not our pid {os.getpid()}")
    if int(os.environ["LISTEN_FDS"]) < 1:
        sys.exit("LISTEN_FDS is set but no socket was passed")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)  # family and type are read from the fd
    sock.set_inheritable(False)
    # Old and new generations share this socket while a reload is in progress. If accept()
    # could block, another process taking the connection first would leave us stuck in it.
    sock.setblocking(False)
    return sock


def sd_notify(message):
    """Send one datagram to $NOTIFY_SOCKET, like sd_notify(3). No-op when it is unset."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):  # abstract socket namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


def main():
    parser = argparse.ArgumentParser(description="Example server for handoff")
    parser.add_argument("--startup-delay", type=float, default=0, metavar="SEC",
                        help="pretend the app needs SEC seconds to start")
    args = parser.parse_args()

    sock = inherited_socket()
    if sock is None:
        print("LISTEN_FDS is not set: binding 127.0.0.1:8080 myself", file=sys.stderr)
        server = Server(("127.0.0.1", 8080), Handler)
    else:
        server = Server.adopt(sock)

    time.sleep(args.startup_delay)  # load config, warm caches, connect to the database...

    def on_stop(signum, frame):
        global draining
        draining = True
        # shutdown() waits for serve_forever() to return, and serve_forever() runs in this
        # (the main) thread: call it from another thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)  # Ctrl-C, when running alone

    # The socket is already listening: connections wait in its queue until serve_forever()
    # accepts them, so we can tell handoff that we are ready right now.
    sd_notify(f"READY=1\nSTATUS=serving, generation {GENERATION}")
    server.serve_forever(poll_interval=0.1)  # returns soon after SIGTERM: no more accept()
    server.server_close()  # waits for the requests in flight, closes our copy of the socket
    sys.exit(0)


if __name__ == "__main__":
    main()
