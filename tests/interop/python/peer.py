#!/usr/bin/env python3
"""Python `ssl` (OpenSSL) peers for the tlsid interop matrix, stdlib only.

The server has the seed tutorial's TLS set-up (`SSLContext` + `load_cert_chain` from the mounted Secret)
with mutual TLS switched on (`load_verify_locations(ca.crt)`, `CERT_REQUIRED`); it answers a GET (curl,
the HTTP clients, the tlsid demo client) with HTTP/1.1 200 and a text greeting, and a client that sends
nothing with the greeting line alone. The client is an `ssl.SSLContext` client that verifies the server's
name and presents its own certificate, as in the seed HTTPS client (`http.client` GET /; a status other
than 200 is a failure).

    peer.py server NAME|DIR|TLS ...   one listener per argument on 127.0.0.1:0: prints "LISTEN NAME PORT",
                                      then per connection "CONN NAME ok VERSION PEER" / "CONN NAME fail ERROR"
                                      ("LOADFAIL NAME ERROR" when the identity cannot be loaded)
    peer.py client                    reads "ID\\tPORT\\tSERVERNAME\\tDIR\\tTLS\\tNOCERT\\tPWFILE" lines from stdin and
                                      prints "RESULT\\tID\\tok|fail\\tVERSION\\tDETAIL" for each
"""
import http.client
import os
import socket
import ssl
import sys
import threading

_out = threading.Lock()


def emit(line):
    with _out:
        sys.stdout.write(line.replace("\n", " ").replace("\r", " ") + "\n")
        sys.stdout.flush()


def pin(ctx, version):
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2


def describe(exc):
    """The most specific text OpenSSL gave: verify_message for verification errors."""
    msg = f"{type(exc).__name__}: {exc}"
    verify = getattr(exc, "verify_message", None)
    if verify and verify not in msg:
        msg += f" ({verify})"
    return msg


def subject(cert):
    if not cert:
        return "-"
    return ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for (k, v) in rdn) or "-"


def respond(tls, peer):
    """After the handshake: an HTTP/1.1 response when the client sends a request within a moment
    (every client of the matrix), else a one-line greeting."""
    tls.settimeout(0.4)
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
    except (socket.timeout, ssl.SSLError, OSError):
        pass
    tls.settimeout(5)
    body = f"hello {peer} from python\n".encode()
    if head.startswith(b"GET "):
        tls.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body) + body
        )
    else:
        tls.sendall(body)
    try:
        tls.unwrap()  # close_notify: the reply is complete
    except (ssl.SSLError, OSError):
        pass


def serve(name, cert_dir, version):
    # The seed server's TLS set-up, with client certificates required and trusted from ca.crt.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pin(ctx, version)
    try:
        ctx.load_cert_chain(os.path.join(cert_dir, "tls.crt"), os.path.join(cert_dir, "tls.key"))
        ctx.load_verify_locations(cafile=os.path.join(cert_dir, "ca.crt"))
    except (ssl.SSLError, OSError) as exc:
        emit(f"LOADFAIL {name} cannot load the identity: {describe(exc)}")
        return
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    emit(f"LISTEN {name} {listener.getsockname()[1]}")

    def handle(sock):
        with sock:
            sock.settimeout(10)
            try:
                tls = ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                emit(f"CONN {name} fail {describe(exc)}")
                return
            with tls:
                peer = subject(tls.getpeercert())
                emit(f"CONN {name} ok {tls.version()} {peer}")
                try:
                    respond(tls, peer)
                except (ssl.SSLError, OSError):
                    pass

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


def server(specs):
    for spec in specs:
        name, cert_dir, version = spec.split("|")[:3]
        threading.Thread(target=serve, args=(name, cert_dir, version), daemon=True).start()
    threading.Event().wait()


class LoopbackHTTPSConnection(http.client.HTTPSConnection):
    """Names the server as a pod would (Host / SNI / verification = NAME) but dials 127.0.0.1."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def attempt(port, server_name, cert_dir, version, nocert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    pin(ctx, version)
    ctx.load_verify_locations(cafile=os.path.join(cert_dir, "ca.crt"))
    if not nocert:
        ctx.load_cert_chain(os.path.join(cert_dir, "tls.crt"), os.path.join(cert_dir, "tls.key"))
    conn = LoopbackHTTPSConnection(server_name, int(port), context=ctx, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        ver = conn.sock.version() if conn.sock else "-"
        if resp.status != 200:
            raise RuntimeError(f"HTTP status {resp.status}: {body}")
        return ver, body
    finally:
        conn.close()


def client():
    for line in sys.stdin:
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 6:
            emit(f"RESULT\t?\tfail\t-\tbad case line {line!r}")
            continue
        case_id, port, server_name, cert_dir, version, nocert = fields[:6]
        try:
            ver, body = attempt(port, server_name, cert_dir, version, nocert == "1")
            emit(f"RESULT\t{case_id}\tok\t{ver}\t{body}")
        except Exception as exc:  # every failure is a result, never a crash
            emit(f"RESULT\t{case_id}\tfail\t-\t{describe(exc)}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        server(sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] == "client":
        client()
    else:
        sys.exit(__doc__)
