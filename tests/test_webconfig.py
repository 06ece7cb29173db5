"""``--web.config.file`` (cgshim/app/webconfig.py, cgshim/app/web.py): the exporter-toolkit
format, TLS with certificates made here by openssl, basic auth with bcrypt hashes; a bad file is
one error naming the key, exit 2, before the port is bound."""
import base64
import http.client
import socket
import ssl
import subprocess
import sys

import bcrypt
import pytest

from cgshim.app import webconfig
from cgshim.errors import ConfigError
from tests.support import certs as _certs
from tests.support.served import REPO, Served

PASSWORD = "s3cret-Passw0rd"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return _certs.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def hashed():
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def write(tmp_path, text, name="web.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- loading: pure, no root ---------------------------------------------------------------------


def test_full_node_exporter_file_loads(tmp_path, certs, hashed):
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: {certs.server_cert}
  key_file: {certs.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certs.ca}
  min_version: TLS13
  prefer_server_cipher_suites: true
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
basic_auth_users:
  alice: {hashed}
""")
    cfg = webconfig.load(path)
    assert cfg.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert cfg.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert cfg.users == {"alice": hashed.encode()}
    assert cfg.headers == (("X-Frame-Options", "deny"),)


def test_relative_paths_are_relative_to_the_file(tmp_path, certs):
    import shutil

    for src in (certs.server_cert, certs.server_key):
        shutil.copy(src, tmp_path)
    path = write(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    assert webconfig.load(path).ssl_context.verify_mode == ssl.CERT_NONE


def test_empty_file_is_plain_http(tmp_path):
    cfg = webconfig.load(write(tmp_path, ""))
    assert cfg.ssl_context is None and cfg.users == {}


BAD = [
    ("tls_server_config:\n  cert_file: {cert}\n", "tls_server_config.key_file", "missing"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: /nonexistent.key\n",
     "tls_server_config.key_file", "no such file"),
    ("tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n",
     "tls_server_config.cert_file", "cannot load"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {other_key}\n",
     "tls_server_config.", "cannot load"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS14\n",
     "tls_server_config.min_version", "not one of"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_auth_type: Sometimes\n",
     "tls_server_config.client_auth_type", "not one of"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_ca_file", "missing"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  cipher_suites: [X]\n",
     "tls_server_config.cipher_suites", "not supported"),
    ("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  certfile: x\n",
     "tls_server_config.certfile", "unknown key"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice", "not a bcrypt hash"),
    ("basic_auth_users: [alice]\n", "basic_auth_users", "must be a mapping"),
    ("basic_auth_user:\n  alice: x\n", "basic_auth_user", "unknown key"),
    ("http_server_config:\n  headers:\n    Content-Type: x\n",
     "http_server_config.headers.Content-Type", "set by the exporter"),
    ("tls_server_config: {{\n", "not valid YAML", "line"),
    ("- a\n- b\n", "the file", "must be a mapping"),
]


@pytest.mark.parametrize("text, key, words", BAD)
def test_bad_file_names_the_key(tmp_path, certs, text, key, words):
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    _certs._openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", "other.key", cwd=str(other))
    shutil.copy(certs.server_cert, tmp_path / "s.crt")
    path = write(tmp_path, text.format(cert=certs.server_cert, key=certs.server_key,
                                       other_key=other / "other.key"))
    with pytest.raises(ConfigError) as info:
        webconfig.load(path)
    msg = str(info.value)
    assert msg.startswith(path) and key in msg and words in msg, msg
    assert "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        webconfig.load(str(tmp_path / "nope.yml"))


@pytest.mark.parametrize("cmd", [["-m", "cgshim", "serve"], ["-m", "cgshim.app.exporter"]])
def test_bad_file_exits_2_before_binding(tmp_path, cmd):
    """The port is taken by the test: a server that bound first would fail with 'address in
    use' (exit 1); the config is checked before, so the answer is exit 2 and the key."""
    path = write(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, *cmd, "--listen", f"127.0.0.1:{port}",
                               "--root", "/", "--web.config.file", path],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "basic_auth_users.alice" in lines[0], proc.stderr


# --- served over TLS with basic auth: real cgroups, needs root ----------------------------------


def client_context(certs, *, client=False, ca=None):
    ctx = ssl.create_default_context(cafile=ca or certs.ca)
    if client:
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
    return ctx


def https(port, context, path="/metrics", auth=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def tls_served(testbed, tmp_path, certs, hashed):
    started = []

    def start(extra=""):
        cg = testbed.cgroup(2)
        testbed.spawn(pipe=1, cgroups=[cg])
        path = write(tmp_path, f"""
tls_server_config:
  cert_file: {certs.server_cert}
  key_file: {certs.server_key}
{extra}
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
basic_auth_users:
  alice: {hashed}
""", name=f"web{len(started)}.yml")
        srv = Served([cg], "--web.config.file", path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


@pytest.mark.kernel
def test_tls_and_basic_auth(tls_served, certs):
    srv = tls_served()
    assert srv.scheme == "https"
    ctx = client_context(certs)
    status, headers, body = https(srv.port, ctx, auth=("alice", PASSWORD))
    assert status == 200 and b"container_tasks_state{" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    for auth in (None, ("alice", "wrong"), ("bob", PASSWORD), ("alice", "x" * 100)):
        status, headers, body = https(srv.port, ctx, auth=auth)
        assert status == 401, auth
        assert headers["WWW-Authenticate"].startswith("Basic ")
        assert b"container" not in body
    assert https(srv.port, ctx, "/healthz", auth=("alice", PASSWORD))[0] == 200
    assert https(srv.port, ctx, "/healthz")[0] == 401

    # A client that does not trust the server's CA fails its handshake; the server goes on.
    with pytest.raises(ssl.SSLCertVerificationError):
        https(srv.port, client_context(certs, ca=certs.other_ca), auth=("alice", PASSWORD))

    # Plain HTTP to the TLS port fails cleanly: a 400 that says so, then close.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 400 and b"HTTP request to an HTTPS server" in resp.read()
    conn.close()
    assert https(srv.port, ctx, auth=("alice", PASSWORD))[0] == 200
    lines = [x for x in srv.lines() if "serving " not in x]
    assert not any("Traceback" in x for x in lines) and len(lines) <= 2, lines


@pytest.mark.kernel
def test_tls_client_certificate_required(tls_served, certs):
    srv = tls_served(f"  client_auth_type: RequireAndVerifyClientCert\n"
                     f"  client_ca_file: {certs.ca}\n")
    status, _, _ = https(srv.port, client_context(certs, client=True), auth=("alice", PASSWORD))
    assert status == 200
    # Without a client certificate the handshake (TLS 1.3: the first read) fails.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https(srv.port, client_context(certs), auth=("alice", PASSWORD))
    assert https(srv.port, client_context(certs, client=True), auth=("alice", PASSWORD))[0] == 200
