"""The exporter's HTTP server: a WSGI app served with bounds that hold whatever clients do.

Design. One asyncio event loop thread owns every connection: it accepts (listen backlog
:data:`BACKLOG`, so a burst of connects is queued, not dropped), reads the request head without
blocking, and enforces one deadline per connection (``request_timeout``: TLS handshake and the
whole request head must arrive within it; writing the response must finish within it). Only a
complete, well-formed request reaches a worker thread, from a pool of ``max_requests`` threads;
one arriving while ``max_requests`` are in flight is answered 503 at once, as node_exporter's
``--web.max-requests`` does (client_golang promhttp's MaxRequestsInFlight). A request stays in
flight until its response is written out, so a client that does not read holds one slot, not
memory without bound. So, whatever clients do:

- threads: the loop thread plus at most ``max_requests`` workers;
- memory: a connection without a complete request holds at most :data:`MAX_HEAD` bytes; at
  most ``max_requests`` responses are buffered;
- fds: at most ``max_connections`` connections (default: half of the soft RLIMIT_NOFILE minus a
  reserve -- the Reader takes at most the other half); at the limit the oldest connection
  that has not sent a complete request is closed to make room.

HTTP/1.1 and 1.0, one request per connection (``Connection: close``). A request line longer than
:data:`MAX_REQUEST_LINE` gets 414, a head longer than :data:`MAX_HEAD` 431, a malformed one 400;
a TLS port answers a plain-HTTP request with 400 (as Go's net/http does) and closes.

With a web config (:mod:`cgshim.app.webconfig`): TLS is done on the loop thread through
:class:`ssl.SSLObject` memory BIOs, under the same deadline; basic auth is checked on a worker
(bcrypt is slow on purpose), with a small cache of recent results as exporter-toolkit keeps, and
an unknown user costs a bcrypt check too, so timing does not tell which users exist.

Logging. A timed-out, malformed, refused or failed connection is never a traceback: it is
counted, and the counts are written as one short line at most every :data:`LOG_EVERY` seconds
(the first at once).
"""
import asyncio
import base64
import collections
from concurrent.futures import ThreadPoolExecutor  # concurrent.futures imports it lazily
import hashlib
import os
import re
import resource
import socket
import ssl
import sys
import threading
import time
import urllib.parse

import attrs

__all__ = ["Server", "WebOptions", "parse_listen", "raise_nofile_limit", "add_arguments",
           "DEFAULT_MAX_REQUESTS", "DEFAULT_REQUEST_TIMEOUT"]

DEFAULT_MAX_REQUESTS = 40  # node_exporter's --web.max-requests
DEFAULT_REQUEST_TIMEOUT = 10.0
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)
MAX_REQUEST_LINE = 8192  # bytes, CRLF included (Go's net/http and nginx use 4-8 KiB lines)
MAX_HEAD = 16384  # request line + headers
LOG_EVERY = 60.0
FD_RESERVE = 64  # fds kept for the process itself (listener, stdio, /proc reads, pipes)
# Connections accepted per wake-up of the loop (asyncio takes its create_server backlog for
# this): the cap is checked between batches, so it is overshot by less than FD_RESERVE.
ACCEPT_BATCH = 16
_NOFILE_CAP = 1 << 20

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


@attrs.frozen
class WebOptions:
    """The serving options of ``python -m cgshim serve`` (see :func:`add_arguments`)."""

    config_file: str = None
    max_requests: int = DEFAULT_MAX_REQUESTS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def from_args(cls, args):
        return cls(config_file=args.web_config_file, max_requests=args.web_max_requests,
                   request_timeout=args.web_request_timeout)

    def load_config(self):
        """The :class:`cgshim.app.webconfig.WebConfig` (None without a file); ConfigError."""
        if self.config_file is None:
            return None
        from cgshim.app import webconfig

        return webconfig.load(self.config_file)


def parse_listen(listen):
    """``"HOST:PORT"`` or ``"[V6ADDR]:PORT"`` -> (host, port). ValueError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:9560, "
                         "[::1]:9560, 0.0.0.0:9560)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one (capped at 2**20), as every Go program
    does at start since Go 1.19 (so node_exporter does): the soft default of 1024 is for
    select(2) users, and a server holding thousands of connections needs more. Returns the
    soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _NOFILE_CAP if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections():
    """Half of the soft RLIMIT_NOFILE minus :data:`FD_RESERVE` (the Reader keeps to the other
    half: cgshim.reader), at least 16."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _NOFILE_CAP
    return max(16, soft // 2 - FD_RESERVE)


class _Log:
    """Counts connection events and writes them as one short line at most every ``every``
    seconds (the first event at once); thread-safe."""

    def __init__(self, write, every=LOG_EVERY):
        self._write = write
        self._every = every
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._since = time.monotonic()
        self._next = 0.0  # monotonic time the next line may be written
        self.lines = 0

    def event(self, what):
        with self._lock:
            self._counts[what] += 1
            now = time.monotonic()
            if now >= self._next:
                self._emit(now)

    def flush(self, force=False):
        """Write what was counted since the last line, if a line is due (called periodically;
        ``force`` at shutdown)."""
        with self._lock:
            now = time.monotonic()
            if self._counts and (force or now >= self._next):
                self._emit(now)

    def _emit(self, now):
        parts = [f"{n} {what}" for what, n in self._counts.most_common()]
        span = max(1, round(now - self._since))
        self._counts.clear()
        self._since = now
        self._next = now + self._every
        self.lines += 1
        try:
            self._write(f"http: {'; '.join(parts)} (last {span} s; next report in "
                        f"{self._every:g} s at most)")
        except Exception:  # noqa: BLE001 -- a closed stderr must not break serving
            pass


class _Auth:
    """Basic-auth check against bcrypt hashes, with exporter-toolkit's cache of recent results
    (keyed by a hash of user, password and stored hash; bounded)."""

    _MAX_CACHE = 256

    def __init__(self, users):
        import bcrypt

        self._users = dict(users)
        self._cache = {}
        self._lock = threading.Lock()
        # Unknown users are checked against a hash of a random password, of the cost the
        # configured users have: the answer takes as long whether the user exists or not.
        cost = max(int(h.split(b"$")[2]) for h in self._users.values())
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))

    def check(self, user, password):
        import bcrypt

        stored = self._users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode("utf-8", "surrogateescape"),
                                         password, stored or b""])).digest()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        try:
            ok = bcrypt.checkpw(password, stored or self._dummy) and stored is not None
        except ValueError:  # bcrypt refuses passwords over 72 bytes: not a match
            ok = False
        with self._lock:
            if len(self._cache) >= self._MAX_CACHE:
                self._cache.clear()
            self._cache[key] = ok
        return ok


class Server:
    """Serves ``app`` (WSGI) on ``host:port`` with the bounds described in the module docstring.

    The socket is bound and listening when the constructor returns (OSError if it cannot be);
    :meth:`start` starts the loop thread, :meth:`stop` closes everything and waits for it.
    ``config``: a :class:`cgshim.app.webconfig.WebConfig` or None. ``log``: a callable taking
    one line (default: stderr with the ``cgshim exporter:`` prefix).
    """

    def __init__(self, app, host, port, *, max_requests=DEFAULT_MAX_REQUESTS,
                 request_timeout=DEFAULT_REQUEST_TIMEOUT, config=None, max_connections=None,
                 log=None):
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, not {max_requests}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, not {request_timeout}")
        self.app = app
        self.max_requests = max_requests
        self.request_timeout = float(request_timeout)
        self.max_connections = max_connections or default_max_connections()
        self.ssl_context = config.ssl_context if config is not None else None
        self.auth = _Auth(config.users) if config is not None and config.users else None
        self.extra_headers = tuple(config.headers) if config is not None else ()
        self.log = _Log(log or _stderr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.server_address = sock.getsockname()
        self.in_flight = 0  # loop thread only
        self._conns = {}  # _Conn -> None, accept order: the oldest first (loop thread only)
        self._loop = None
        self._thread = None
        self._started = threading.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=max_requests, thread_name_prefix="cgshim-http-worker")

    @property
    def scheme(self):
        return "https" if self.ssl_context is not None else "http"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="cgshim-http", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def _run(self):
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(self._loop_error)

        def flush():
            self.log.flush()
            loop.call_later(1.0, flush)

        loop.call_soon(flush)
        try:
            server = loop.run_until_complete(
                loop.create_server(lambda: _Conn(self), sock=self._sock, backlog=ACCEPT_BATCH))
            self._sock.listen(BACKLOG)  # create_server listened with the batch size
        finally:
            self._started.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for conn in list(self._conns):
                conn.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def stop(self):
        """Stop accepting, close every connection, stop the loop and the workers."""
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._sock.close()
        self.log.flush(force=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _loop_error(self, loop, context):
        exc = context.get("exception")
        what = type(exc).__name__ if exc is not None else context.get("message", "?")
        self.log.event(f"internal error ({what}: {str(exc)[:80] if exc else ''})")

    # -- connections (loop thread) -------------------------------------------------------------
    def _accepted(self, conn):
        if len(self._conns) >= self.max_connections:
            victim = next((c for c in self._conns if c.waiting), None)
            if victim is None:
                conn.abort()
                self.log.event(f"connections refused at the connection limit "
                               f"({self.max_connections})")
                return False
            victim.abort()  # it leaves self._conns at once
            self.log.event(f"waiting connections closed at the connection limit "
                           f"({self.max_connections})")
        self._conns[conn] = None
        return True

    def _closed(self, conn):
        self._conns.pop(conn, None)

    # -- requests (worker threads) ------------------------------------------------------------
    def _handle(self, environ, credentials):
        """Run on a worker: auth, then the app. Returns the response as bytes."""
        head_only = environ["REQUEST_METHOD"] == "HEAD"
        if self.auth is not None:
            if credentials is None or not self.auth.check(*credentials):
                self.log.event("requests refused: wrong user or password (401)")
                return self.response(401, b"Unauthorized\n", head_only=head_only,
                                     headers=[("WWW-Authenticate", 'Basic realm="cgshim"')])
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: captured.setdefault("written", []).append(data)

        try:
            result = self.app(environ, start_response)
            try:
                body = b"".join([*captured.get("written", []), *result])
            finally:
                if hasattr(result, "close"):
                    result.close()
            code = int(captured["status"].split(" ", 1)[0])
        except Exception as exc:  # noqa: BLE001 -- a bug of the app: 500 and one counted line
            self.log.event(f"requests failed in the app (500; {type(exc).__name__}: "
                           f"{str(exc)[:80]})")
            return self.response(500, b"internal error\n", head_only=head_only)
        headers = [(k, v) for k, v in captured["headers"]
                   if k.lower() not in ("content-length", "connection")]
        return self.response(code, body, headers=headers, head_only=head_only)

    def response(self, code, body, *, headers=(), head_only=False):
        """A complete HTTP/1.1 response, ``Connection: close``."""
        lines = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}"]
        names = {k.lower() for k, _ in headers}
        if "content-type" not in names:
            headers = [*headers, ("Content-Type", "text/plain; charset=utf-8")]
        for name, value in (*headers, *self.extra_headers,
                            ("Content-Length", str(len(body))), ("Connection", "close")):
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + body


def _stderr(line):
    print(f"cgshim exporter: {line}", file=sys.stderr, flush=True)


class _Conn(asyncio.Protocol):
    """One connection: TLS (memory BIOs), the request head under a deadline, then one response."""

    def __init__(self, server):
        self.s = server
        self.transport = None
        self.buf = bytearray()
        self.waiting = True  # no complete request yet (a candidate for eviction)
        self.holding = False  # holds a max_requests slot
        self.worker_busy = False
        self.lost = False
        self.head_only = False
        self.tls = None  # (SSLObject, incoming BIO, outgoing BIO) while TLS
        self.handshaken = False
        self.first = True  # no byte received yet
        self.timer = None

    # -- transport events ----------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if not self.s._accepted(self):
            return
        loop = self.s._loop
        self.timer = loop.call_later(self.s.request_timeout, self._timeout)
        if self.s.ssl_context is not None:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = self.s.ssl_context.wrap_bio(incoming, outgoing, server_side=True)
            self.tls = (obj, incoming, outgoing)

    def data_received(self, data):
        if self.tls is None:
            self._plain(data)
            return
        if not self.waiting:
            return  # after the request (a close_notify, a pipelined request): nothing to do
        obj, incoming, outgoing = self.tls
        first, self.first = self.first, False
        if first and data[:1] != b"\x16":
            # Not a TLS handshake record: a plain-HTTP client on a TLS port.
            self.tls = None
            self.s.log.event("plain-HTTP requests to the TLS port (400)")
            self._finish(self.s.response(400, b"Client sent an HTTP request to an HTTPS server.\n"))
            return
        incoming.write(data)
        try:
            if not self.handshaken:
                obj.do_handshake()
                self.handshaken = True
            plain = bytearray()
            while True:
                chunk = obj.read(65536)
                if not chunk:
                    break
                plain += chunk
        except ssl.SSLWantReadError:
            plain = None if not self.handshaken else plain
        except ssl.SSLZeroReturnError:
            plain = b""  # close_notify: the client is done
        except ssl.SSLError as exc:
            self.s.log.event(f"TLS handshakes failed ({exc.reason or type(exc).__name__})")
            self.waiting = False
            self._flush_tls()  # the alert, if OpenSSL made one
            self.transport.close()
            return
        self._flush_tls()
        if plain:
            self._plain(bytes(plain))

    def eof_received(self):
        # A client that half-closes after its request still gets the response; one that
        # half-closes before completing it is done.
        return not self.waiting

    def connection_lost(self, exc):
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
        self.s._closed(self)
        self._release()

    # -- request head --------------------------------------------------------------------------
    def _plain(self, data):
        if not self.waiting:
            return  # after the head: a body or pipelined requests, ignored (we close)
        self.buf += data
        end = _END_OF_HEAD.search(self.buf)
        if end is None:
            newline = self.buf.find(b"\n")
            if (newline < 0 and len(self.buf) > MAX_REQUEST_LINE) or newline > MAX_REQUEST_LINE:
                self._refuse(414, "request line too long")
            elif len(self.buf) > MAX_HEAD:
                self._refuse(431, "request head too large")
            return
        if end.end() > MAX_HEAD:
            self._refuse(431, "request head too large")
            return
        head = bytes(self.buf[:end.start()])
        self.buf = bytearray()
        self.waiting = False
        self._request(head)

    def _request(self, head):
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        parts = lines[0].split(b" ")
        if len(lines[0]) > MAX_REQUEST_LINE:
            return self._refuse(414, "request line too long")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
            return self._refuse(400, "malformed request line")
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            return self._refuse(505 if version.startswith(b"HTTP/") else 400,
                                "unsupported HTTP version")
        self.head_only = method == b"HEAD"
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                return self._refuse(400, "malformed header")
            key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
            value = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        if target.startswith((b"http://", b"https://")):  # absolute-form
            target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
        if not target.startswith(b"/"):
            return self._refuse(400, "malformed request target")
        path, _, query = target.decode("latin-1").partition("?")
        credentials = None
        if self.s.auth is not None:
            credentials = _basic_credentials(headers.get("HTTP_AUTHORIZATION"))
            if credentials is None:  # no (usable) credentials: no bcrypt needed to say no
                return self._finish(self.s.response(
                    401, b"Unauthorized\n", head_only=self.head_only,
                    headers=[("WWW-Authenticate", 'Basic realm="cgshim"')]))
        if self.s.in_flight >= self.s.max_requests:
            self.s.log.event(f"requests refused over --web.max-requests {self.s.max_requests} (503)")
            return self._finish(self.s.response(
                503, f"too many concurrent requests (--web.max-requests "
                     f"{self.s.max_requests})\n".encode(),
                head_only=self.head_only, headers=[("Retry-After", "1")]))
        peer = self.transport.get_extra_info("peername") or ("", 0)
        host, port = self.s.server_address[:2]
        environ = {
            "REQUEST_METHOD": method.decode("ascii"), "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path, "latin-1"), "QUERY_STRING": query,
            "SERVER_NAME": str(host), "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": version.decode("ascii"), "REMOTE_ADDR": str(peer[0]),
            "wsgi.version": (1, 0), "wsgi.url_scheme": self.s.scheme,
            "wsgi.input": _EMPTY, "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False, **headers,
        }
        environ.pop("HTTP_CONTENT_LENGTH", None)
        environ.pop("HTTP_CONTENT_TYPE", None)
        self.s.in_flight += 1
        self.holding = True
        self.worker_busy = True
        future = self.s._loop.run_in_executor(self.s._executor, self.s._handle, environ,
                                              credentials)
        future.add_done_callback(self._handled)

    def _handled(self, future):
        self.worker_busy = False
        if future.cancelled() or self.lost:
            self._release()
            return
        exc = future.exception()
        if exc is not None:
            self.s.log.event(f"requests failed ({type(exc).__name__})")
            self.abort()
            return
        self._finish(future.result())

    def _refuse(self, code, why):
        self.waiting = False
        self.s.log.event(f"malformed requests ({code}: {why})")
        self._finish(self.s.response(code, f"{why}\n".encode()))

    # -- response ------------------------------------------------------------------------------
    def _finish(self, data):
        """Write ``data`` and close; the deadline now bounds the write."""
        self.waiting = False
        if self.lost:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.s._loop.call_later(self.s.request_timeout, self._timeout)
        if self.tls is not None:
            obj = self.tls[0]
            try:
                view = memoryview(data)
                for i in range(0, len(view), 16384):
                    obj.write(view[i:i + 16384])
                try:
                    obj.unwrap()  # close_notify
                except (ssl.SSLWantReadError, ssl.SSLError):
                    pass
            except ssl.SSLError:
                self.abort()
                return
            self._flush_tls()
        else:
            self.transport.write(data)
        self.transport.close()  # after the buffer is flushed; connection_lost follows

    def _flush_tls(self):
        out = self.tls[2].read() if self.tls is not None else b""
        if out and not self.lost:
            self.transport.write(out)

    def _timeout(self):
        self.timer = None
        if self.waiting:
            self.s.log.event(f"connections closed without a complete request within "
                             f"{self.s.request_timeout:g} s")
        else:
            self.s.log.event(f"responses not taken by the client within "
                             f"{self.s.request_timeout:g} s")
        self.abort()

    def abort(self):
        self.waiting = False
        self.s._closed(self)
        if self.transport is not None and not self.lost:
            self.transport.abort()  # connection_lost follows (next loop iteration)

    def _release(self):
        if self.holding and self.lost and not self.worker_busy:
            self.holding = False
            self.s.in_flight -= 1


class _Empty:
    def read(self, *args):
        return b""

    def readline(self, *args):
        return b""

    def readlines(self, *args):
        return []

    def __iter__(self):
        return iter(())


_EMPTY = _Empty()


def _basic_credentials(header):
    """(user, password bytes) from an ``Authorization: Basic`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "surrogateescape"), password


# ------------------------------------------------------------------------------- options


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (the worker threads are always bounded), "
                                         f"got {text}")
    return value


def _seconds(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def add_arguments(parser):
    """The HTTP options of ``serve``, named as node_exporter names them."""
    parser.add_argument("--web.config.file", dest="web_config_file", default=None, metavar="FILE",
                        help="TLS and basic auth, in the Prometheus exporter-toolkit format "
                             "(the file written for node_exporter works)")
    parser.add_argument("--web.max-requests", dest="web_max_requests", type=_positive_int,
                        default=DEFAULT_MAX_REQUESTS, metavar="N",
                        help="requests served at once; more are answered 503 "
                             f"(default {DEFAULT_MAX_REQUESTS})")
    parser.add_argument("--web.request-timeout", dest="web_request_timeout", type=_seconds,
                        default=DEFAULT_REQUEST_TIMEOUT, metavar="SECONDS",
                        help="time a client has to send its request (TLS handshake included), "
                             "and to take the response (default "
                             f"{DEFAULT_REQUEST_TIMEOUT:g})")
    return parser
