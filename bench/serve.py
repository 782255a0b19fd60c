#!/usr/bin/env python3
"""Static file server for the benchmark: serves DIR on 127.0.0.1 only, on a free port.
Prints "PORT <n>" once listening.  Threaded (one thread per connection), HTTP/1.0
(one request per connection), no request log: the same server for Dask and arrayjob.

usage: serve.py DIR
"""
import functools
import http.server
import sys


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main():
    handler = functools.partial(Quiet, directory=sys.argv[1])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
