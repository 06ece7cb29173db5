"""The exporter's ``--web.config.file``: TLS and basic auth in the Prometheus exporter-toolkit
format, so that the file written for node_exporter works here unchanged.

Format (prometheus/exporter-toolkit docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt          # PEM; relative paths are relative to this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
      client_ca_file: ca.crt         # needed by the verifying client_auth_types
      min_version: TLS12             # TLS10..TLS13; default TLS12, as exporter-toolkit
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}   # extra response headers
      http2: true                    # accepted; cgshim speaks HTTP/1.1 only
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hash (htpasswd -B, or python -c "import bcrypt...")

As exporter-toolkit does, an unknown key is an error, and so is every value that cannot be used
(a certificate that does not load, a key that does not match it, a hash that is not bcrypt).
Everything is checked when the file is loaded, before the exporter binds its port: a bad file
gives one :class:`cgshim.errors.ConfigError` naming the file and the key.

Not offered (an error names them): ``cipher_suites`` and ``curve_preferences`` (Go's names;
OpenSSL's defaults are used), ``client_auth_type`` RequestClientCert / RequireAnyClientCert
(accepting an unverified client certificate is not possible with Python's ssl), ``client_allowed_sans``.
"""
import os
import re
import ssl

import attrs

from cgshim.errors import ConfigError

__all__ = ["WebConfig", "load"]

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's client_auth_type values (Go's tls.ClientAuthType names) that Python's ssl
# can enforce.
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_UNSUPPORTED_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version", "prefer_server_cipher_suites"}
_NOT_OFFERED = {"cipher_suites": "Go cipher suite names; cgshim uses OpenSSL's defaults",
                "curve_preferences": "Go curve names; cgshim uses OpenSSL's defaults",
                "client_allowed_sans": "not implemented by cgshim",
                "cert": "inline certificates are not implemented by cgshim; use cert_file",
                "key": "inline keys are not implemented by cgshim; use key_file",
                "client_ca": "inline CAs are not implemented by cgshim; use client_ca_file"}
# A bcrypt hash in modular crypt format: $2a$/$2b$/$2x$/$2y$, cost, 22 salt + 31 hash chars.
_BCRYPT = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")
# A header field name is an RFC 9110 token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@attrs.frozen
class WebConfig:
    """A loaded web configuration. ``ssl_context`` is None for plain HTTP; ``users`` maps a
    user name to its bcrypt hash (bytes), empty for no authentication; ``headers`` are extra
    response headers as (name, value) pairs."""

    path: str = None
    ssl_context: ssl.SSLContext = None
    users: dict = attrs.field(factory=dict)
    headers: tuple = ()


def load(path):
    """Load and check the web configuration file at ``path``; ConfigError on anything wrong."""
    try:
        import yaml
    except ImportError:  # pragma: no cover -- the exporter extra brings it
        raise ConfigError("--web.config.file needs PyYAML: pip install 'cgshim[exporter]'") from None
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the web config file: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if doc is None:
        doc = {}
    base = os.path.dirname(os.path.abspath(path))
    return _build(path, base, _mapping(path, "", doc))


def _fail(path, key, message):
    raise ConfigError(f"{path}: {key}: {message}")


def _mapping(path, key, value):
    if not isinstance(value, dict):
        what = "the file" if not key else key
        raise ConfigError(f"{path}: {what}: must be a mapping, not {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            _fail(path, f"{key}{'.' if key else ''}{k!r}", "keys must be strings")
    return value


def _string(path, key, value):
    if not isinstance(value, str) or not value:
        _fail(path, key, f"must be a non-empty string, not {value!r}")
    return value


def _build(path, base, doc):
    unknown = sorted(set(doc) - {"tls_server_config", "http_server_config", "basic_auth_users"})
    if unknown:
        _fail(path, unknown[0], "unknown key (known: tls_server_config, http_server_config, "
                                "basic_auth_users)")
    context = None
    if doc.get("tls_server_config") is not None:
        context = _tls(path, base, _mapping(path, "tls_server_config", doc["tls_server_config"]))
    users = {}
    if doc.get("basic_auth_users") is not None:
        for user, hashed in _mapping(path, "basic_auth_users", doc["basic_auth_users"]).items():
            key = f"basic_auth_users.{user}"
            if not user or ":" in user:
                _fail(path, key, "a user name must be non-empty and must not contain ':'")
            if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
                _fail(path, key, "not a bcrypt hash (want $2y$<cost>$<53 chars>, e.g. from "
                                 "htpasswd -nBC 10 USER)")
            if not 4 <= int(_BCRYPT.fullmatch(hashed).group(1)) <= 31:
                _fail(path, key, "bcrypt cost must be between 04 and 31")
            users[user] = hashed.encode("ascii")
    headers = []
    if doc.get("http_server_config") is not None:
        http = _mapping(path, "http_server_config", doc["http_server_config"])
        unknown = sorted(set(http) - {"headers", "http2"})
        if unknown:
            _fail(path, f"http_server_config.{unknown[0]}", "unknown key (known: headers, http2)")
        if "http2" in http and not isinstance(http["http2"], bool):
            _fail(path, "http_server_config.http2", f"must be true or false, not {http['http2']!r}")
        for name, value in _mapping(path, "http_server_config.headers",
                                    http.get("headers") or {}).items():
            key = f"http_server_config.headers.{name}"
            if not _TOKEN.fullmatch(name):
                _fail(path, key, "not a valid header name")
            if name.lower() in ("content-length", "content-type", "content-encoding",
                                "connection", "transfer-encoding", "www-authenticate"):
                _fail(path, key, "set by the exporter itself; cannot be configured")
            if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
                _fail(path, key, "must be a one-line string")
            headers.append((name, value))
    return WebConfig(path=path, ssl_context=context, users=users, headers=tuple(headers))


def _tls(path, base, tls):
    prefix = "tls_server_config"
    for key in sorted(tls):
        if key in _NOT_OFFERED:
            _fail(path, f"{prefix}.{key}", f"not supported ({_NOT_OFFERED[key]}); remove the key")
        if key not in _TLS_KEYS:
            _fail(path, f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(_TLS_KEYS))})")
    for key in ("cert_file", "key_file"):
        if tls.get(key) is None:
            _fail(path, f"{prefix}.{key}", "missing (needed for TLS)")

    def file(key):
        name = _string(path, f"{prefix}.{key}", tls[key])
        full = os.path.join(base, name)
        if not os.path.isfile(full):
            _fail(path, f"{prefix}.{key}", f"{full}: no such file")
        return full

    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = tls.get(key) or default
        if value not in _TLS_VERSIONS:
            _fail(path, f"{prefix}.{key}", f"{value!r} is not one of {', '.join(_TLS_VERSIONS)}")
        versions[key] = _TLS_VERSIONS[value]
    if versions["min_version"] > versions["max_version"]:
        _fail(path, f"{prefix}.min_version", "is above max_version")
    if "prefer_server_cipher_suites" in tls and not isinstance(tls["prefer_server_cipher_suites"], bool):
        _fail(path, f"{prefix}.prefer_server_cipher_suites", "must be true or false")
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth in _UNSUPPORTED_AUTH:
        _fail(path, f"{prefix}.client_auth_type",
              f"{auth} is not supported (a client certificate is either verified or not asked "
              "for); use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in _CLIENT_AUTH:
        _fail(path, f"{prefix}.client_auth_type",
              f"{auth!r} is not one of {', '.join(_CLIENT_AUTH)}")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = versions["min_version"]
        context.maximum_version = versions["max_version"]
    except (ValueError, ssl.SSLError) as exc:
        _fail(path, f"{prefix}.min_version", f"refused by this OpenSSL: {exc}")
    cert, key = file("cert_file"), file("key_file")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        which = "key_file" if "KEY" in (exc.reason or "") else "cert_file"
        _fail(path, f"{prefix}.{which}", f"cannot load {cert} with {key}: {exc.reason or exc}")
    except OSError as exc:
        _fail(path, f"{prefix}.cert_file", f"cannot load {cert} with {key}: {exc.strerror}")
    context.verify_mode = _CLIENT_AUTH[auth]
    if tls.get("client_ca_file") is not None:
        ca = file("client_ca_file")
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            _fail(path, f"{prefix}.client_ca_file", f"cannot load {ca}: {exc}")
    elif auth != "NoClientCert":
        _fail(path, f"{prefix}.client_ca_file", f"missing (needed by client_auth_type {auth})")
    return context
