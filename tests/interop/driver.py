#!/usr/bin/env python3
"""The tlsid interop matrix: real clients and servers of each TLS stack against each other, with
mutual TLS, over a directory of issued identities. Stdlib only. See docs/interop.md.

    python3 tests/interop/driver.py --identities DIR [--identities DIR2 ...] [--out matrix.md]

DIR holds one subdirectory per identity, with the Secret's files exactly as a pod mounts them
(tls.crt, tls.key, ca.crt, keystore.p12, truststore.p12, the PKCS#12 password file) and a meta.json:
    {"name": "ecdsa-p256", "key_type": "ecdsa-p256", "role": "matrix", "chain": "root",
     "dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"], "usages": ["server", "client"],
     "password_file": "keystore-password"}
role is one of matrix, wrong-san, expired, untrusted, server-only, client-only, rollover. Matrix and
rollover identities must carry the DNS SAN given by --server-name (default localhost). A rollover
identity's meta.json also says which state of a CA rollover it is:
    "rollover": {"case": "root" | "intermediate", "leaf": "old" | "new", "bundle": "old" | "overlap" | "new"}
Exit status 1 when an expected pass fails, a negative case is not rejected for the expected reason, or
a rollover cell's outcome is not the expected one; 2 on set-up errors.
"""
import argparse
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VERSIONS = ["1.3", "1.2"]
SERVER_STACKS = ["rustls", "python", "go", "java"]
CLIENT_STACKS = ["rustls", "python", "go", "java", "curl", "openssl"]
STACK_TITLE = {
    "rustls": "rustls",
    "python": "Python ssl",
    "go": "Go crypto/tls",
    "java": "Java JSSE",
    "curl": "curl",
    "openssl": "openssl s_client",
}
KEY_ORDER = ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"]

# Negative cases. "client" cases are judged by the client (it verifies the server's certificate);
# "server" cases by the server (it verifies the client's). reason: what the verifier's error must say.
NEGATIVES = [
    ("wrong-san", "client", "server's certificate lacks the name the client asked for",
     r"host ?name|subject alternative|not valid for|is valid for|doesn't match|does not match|NotValidForName|no alternative certificate subject name"),
    ("expired", "client", "server's certificate has expired",
     r"expired|NotAfter|validity check failed"),
    ("untrusted", "client", "server's certificate is from a CA the client does not trust",
     r"unknown ?(authority|issuer|ca)|UnknownIssuer|local issuer|unable to find valid certification path|PKIX path building failed|unable to verify the first certificate"),
    ("client-only", "client", "server presents a client-only (EKU clientAuth) certificate",
     r"purpose|extended key usage|ExtendedKeyUsage|incompatible key usage|InvalidPurpose|not permit"),
    ("no-client-cert", "server", "client presents no certificate",
     r"didn't provide a certificate|did not return a certificate|empty (client |server )?certificate chain|NoCertificatesPresented|no certificates|certificate required|CertificateRequired"),
    ("expired", "server", "client's certificate has expired",
     r"expired|NotAfter|validity check failed"),
    ("untrusted", "server", "client's certificate is from a CA the server does not trust",
     r"unknown ?(authority|issuer|ca)|UnknownIssuer|local issuer|unable to find valid certification path|PKIX path building failed|unable to verify the first certificate|unknownca|UNKNOWN_CA"),
    ("server-only", "server", "client presents a server-only (EKU serverAuth) certificate",
     r"purpose|extended key usage|ExtendedKeyUsage|incompatible key usage|InvalidPurpose|not permit"),
]
# The peer presenting the bad certificate in negative cases, by who judges; the stack under test is the
# verifier. Client certificates are presented by the Python (OpenSSL) client because OpenSSL always sends
# the configured certificate, whereas Go's client withholds one not issued by a CA the server lists in
# its CertificateRequest (so an untrusted Go client arrives with no certificate at all).
NEGATIVE_PRESENTER = {"client": "go", "server": "python"}

# The CA rollover section: a leaf of the old CA or of the new one, judged against the old bundle {A},
# the overlap bundle {A, new} or the new bundle {new}. A stack trusts a leaf exactly when the bundle
# holds the root the leaf chains to; anything else must be refused as an unknown issuer.
ROLLOVER_CASES = [
    ("root", "root A → root B"),
    ("intermediate", "root A → root C's intermediate (tls.crt = leaf + intermediate, bundle = root C)"),
]
ROLLOVER_LEAVES = ["old", "new"]
ROLLOVER_BUNDLES = ["old", "overlap", "new"]
ROLLOVER_TRUSTED = {("old", "old"), ("old", "overlap"), ("new", "overlap"), ("new", "new")}
# The verifier's own words for "no trusted root": OpenSSL says "self-signed certificate in certificate
# chain" when the peer sent its root along (an OpenSSL client whose tls.crt holds the leaf alone appends
# the root it finds in its own CA file, here the overlap bundle's old root) and that root is not trusted.
UNKNOWN_ISSUER = (r"unknown ?(authority|issuer)|UnknownIssuer|local issuer|unable to find valid certification path|"
                  r"PKIX path building failed|unable to verify the first certificate|"
                  r"self-signed certificate in certificate chain")
# What the presenting peer says when it refused its peer itself (it trusts the overlap bundle, so it
# never should): a refusal cell counts only when the presenter did not refuse first.
PRESENTER_OWN_REFUSAL = {"go": r"failed to verify certificate", "python": r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError"}

# Cells a stack cannot run, with the reason; they are shown as n/a, never hidden. Each entry:
# (client stack or None, server stack or None, key type or None, TLS version or None, reason).
# Filled from evidence (a failing run), never to make a failure go away that is tlsid's to fix.
KNOWN_UNSUPPORTED = []


def log(msg):
    print(msg, flush=True)


def die(msg):
    """A set-up error (not a test failure): exit status 2."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def one_line(text, limit=300):
    text = re.sub(r"\s+", " ", text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def locked_version(crate):
    """The version of a crate in Cargo.lock, or '?'."""
    try:
        with open(os.path.join(REPO, "Cargo.lock")) as f:
            m = re.search(r'\[\[package\]\]\nname = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', f.read())
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def demo_env():
    """The environment of `tlsid demo` processes: plain errors, no colours."""
    return dict(os.environ, RUST_BACKTRACE="0", NO_COLOR="1")


def demo_record(line):
    """A JSON log record of `tlsid --log-format json demo …`, or None."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


# What `tlsid demo client` logs once per attempt (the driver reads the first of these).
DEMO_CLIENT_RESULTS = ("mTLS handshake ok", "mTLS handshake failed", "request refused", "request failed")


def answered(body):
    """Whether a response body is a server's positive answer: the peers' greeting text ("hello … from
    go"), or the tlsid demo server's JSON with "decision": "allowed"."""
    body = (body or "").strip()
    if body.startswith("hello"):
        return True
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("decision") == "allowed"


def demo_server_line(name, line):
    """Translate the demo server's log into the driver's LISTEN / LOADFAIL / CONN lines."""
    rec = demo_record(line)
    if rec is None:
        return line
    msg = rec.get("message", "")
    if msg.startswith("serving mTLS on") and rec.get("listen"):
        return f"LISTEN {name} {rec['listen'].rsplit(':', 1)[1]}"
    if msg == "waiting for valid credentials":
        return f"LOADFAIL {name} {rec.get('error', msg)}"
    if msg == "mTLS handshake ok":
        return f"CONN {name} ok {rec.get('tls_version', '')} peer={rec.get('peer', '')}"
    if msg == "mTLS handshake failed":
        return f"CONN {name} fail {rec.get('reason', msg)}"
    return f"{rec.get('level', '')} {msg} {rec.get('error', '')}".strip()


# === identities ===

@dataclass
class Identity:
    name: str
    dir: str
    key_type: str
    role: str
    chain: str
    password_file: str
    meta: dict = field(default_factory=dict)

    @property
    def label(self):
        return self.key_type + (" via intermediate" if self.chain == "intermediate" else "")


def load_identities(dirs):
    ids = []
    for top in dirs:
        if not os.path.isdir(top):
            die(f"--identities {top}: not a directory")
        for name in sorted(os.listdir(top)):
            d = os.path.join(top, name)
            meta_path = os.path.join(d, "meta.json")
            if not os.path.isfile(meta_path):
                continue
            with open(meta_path) as f:
                meta = json.load(f)
            missing = [f for f in ("tls.crt", "tls.key", "ca.crt", "keystore.p12", "truststore.p12")
                       if not os.path.isfile(os.path.join(d, f))]
            if missing:
                die(f"identity {d}: missing {', '.join(missing)}")
            with open(os.path.join(d, "tls.crt")) as f:
                n_certs = f.read().count("BEGIN CERTIFICATE")
            ids.append(Identity(
                name=meta.get("name", name), dir=os.path.abspath(d), key_type=meta["key_type"],
                role=meta.get("role", "matrix"),
                chain=meta.get("chain", "intermediate" if n_certs > 1 else "root"),
                password_file=os.path.join(os.path.abspath(d), meta.get("password_file", "keystore-password")),
                meta=meta))
    return ids


# === processes ===

class Server:
    """A server process with one or more listeners; its CONN lines are queued per listener."""

    def __init__(self, stack, argv, env=None, names=(), unnamed=None, demo=None):
        self.stack = stack
        self.unnamed = unnamed  # single-listener peers (the rustls stand-in) print lines without a name
        self.demo = demo  # the real `tlsid demo server` (JSON logs) serving this one listener
        self.ports = {}
        self.events = {n: queue.Queue() for n in names}
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.loadfail = {}  # listener -> why the server could not load its identity
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = re.sub(r"^test \S+ \.\.\. ", "", line.rstrip("\n"))  # libtest's line (stand-in)
            if self.demo:
                line = demo_server_line(self.demo, line)
            if self.unnamed and re.match(r"(LISTEN|CONN) ", line):
                line = line.replace(" ", f" {self.unnamed} ", 1)
            m = re.match(r"LISTEN (\S+) (\d+)$", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
                if len(self.ports) + len(self.loadfail) >= len(self.events):
                    self.listening.set()
                continue
            m = re.match(r"LOADFAIL (\S+) (.*)$", line)
            if m:
                self.loadfail[m.group(1)] = m.group(2)
                if len(self.ports) + len(self.loadfail) >= len(self.events):
                    self.listening.set()
                continue
            m = re.match(r"CONN (\S+) (ok|fail) ?(.*)$", line)
            if m and m.group(1) in self.events:
                self.events[m.group(1)].put((m.group(2) == "ok", m.group(3)))
                continue
            self.lines.put(line)
        # The process ended: listeners that never came up failed to load (e.g. the stand-in panicked).
        tail = []
        while not self.lines.empty():
            tail.append(self.lines.get())
        for n in self.events:
            if n not in self.ports and n not in self.loadfail:
                self.loadfail[n] = "server exited: " + one_line(" | ".join(tail[-8:]), 400)
        self.listening.set()

    def wait_ready(self, timeout=60):
        if not self.listening.wait(timeout):
            out = []
            while not self.lines.empty():
                out.append(self.lines.get())
            raise RuntimeError(f"{self.stack} server did not start: {' | '.join(out[-20:])}")

    def drain(self, name):
        q = self.events[name]
        while not q.empty():
            q.get()

    def event(self, name, timeout=3.0):
        """The server's verdict on the latest connection: (ok, text); ok is None without one."""
        q = self.events[name]
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None, "(no event from the server)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Agent:
    """A long-lived client process answering one case per stdin line (Go, Python, Java)."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, bufsize=1)
        self.out = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.n = 0

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("RESULT\t"):
                self.out.put(line.rstrip("\n").split("\t", 4))

    def run(self, port, server_name, ident, version, nocert, timeout=30):
        self.n += 1
        case_id = str(self.n)
        self.proc.stdin.write("\t".join([case_id, str(port), server_name, ident.dir, version,
                                         "1" if nocert else "0", ident.password_file]) + "\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                r = self.out.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                break
            if r[1] == case_id:
                return r[2] == "ok", norm_version(r[3]), r[4] if len(r) > 4 else ""
        return False, None, "timed out waiting for the client"

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


# === stacks ===

def norm_version(v):
    if not v:
        return None
    v = v.replace("_", ".").replace("TLSv", "").replace("TLS ", "").replace("TLS", "").strip()
    return v if v in ("1.2", "1.3") else None


class Stacks:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        os.makedirs(self.work, exist_ok=True)
        self.versions = {}
        self.unavailable = {}  # stack -> reason
        self.rustls_mode = None
        self.go_bin = self.java_cp = self.testbin = self.tlsid_bin = None

    def setup(self, stacks):
        self._setup_go()
        self._setup_java()
        if "rustls" in stacks:
            self._setup_rustls()
        else:
            self.unavailable["rustls"] = "not selected (--stacks)"
        self.versions["python"] = f"Python {sys.version.split()[0]}, {__import__('ssl').OPENSSL_VERSION}"
        for tool, argv in (("curl", ["curl", "--version"]), ("openssl", ["openssl", "version"])):
            if shutil.which(tool):
                first = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
                self.versions[tool] = " ".join(first.split()[:2])
            else:
                self.unavailable[tool] = f"{tool} not installed"

    def _hash(self, *paths):
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                h.update(f.read())
        return h.hexdigest()[:12]

    def _setup_go(self):
        if not shutil.which("go"):
            self.unavailable["go"] = "go not installed"
            return
        src = os.path.join(HERE, "go")
        out = os.path.join(self.work, f"go-interop-{self._hash(os.path.join(src, 'main.go'), os.path.join(src, 'go.mod'))}")
        if not os.path.exists(out):
            log("building the Go peer (go build)…")
            # The flags hack/build-k8s.sh uses, so the standard library it compiled is reused from
            # Go's build cache (a cold build of net/http and crypto/tls takes ~45 CPU-seconds).
            env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="")
            # Built aside and renamed: the matrix and the rollover test may run drivers at once.
            tmp = f"{out}.{os.getpid()}"
            subprocess.run(["go", "build", "-trimpath", "-o", tmp, "."], cwd=src, env=env, check=True)
            os.replace(tmp, out)
        self.go_bin = out
        self.versions["go"] = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()

    def _setup_java(self):
        if not (shutil.which("javac") and shutil.which("java")):
            self.unavailable["java"] = "javac/java not installed"
            return
        src = os.path.join(HERE, "java", "Interop.java")
        out = os.path.join(self.work, f"java-{self._hash(src)}")
        if not os.path.exists(os.path.join(out, "Interop.class")):
            log("compiling the Java peer (javac)…")
            tmp = f"{out}.{os.getpid()}"  # compiled aside and renamed, as the Go peer is built
            subprocess.run(["javac", "-d", tmp, src], check=True)
            if os.path.exists(os.path.join(out, "Interop.class")):  # another driver got there first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(out, ignore_errors=True)  # a half-made dir of an older driver
                os.rename(tmp, out)
        self.java_cp = out
        v = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
        self.versions["java"] = v[0] if v else "java"

    def _setup_rustls(self):
        mode = self.args.rustls
        bin_ = os.environ.get("TLSID_BIN") or os.path.join(REPO, "target", "debug", "tlsid")
        demo_ok = os.path.exists(bin_) and subprocess.run(
            [bin_, "demo", "server", "--help"], capture_output=True).returncode == 0
        if mode in ("auto", "demo") and demo_ok:
            self.rustls_mode, self.tlsid_bin = "demo", bin_
            self.versions["rustls"] = f"`tlsid demo server` / `tlsid demo client` (rustls {locked_version('rustls')})"
            return
        if mode == "demo":
            self.unavailable["rustls"] = f"{bin_} has no 'demo' subcommand"
            return
        testbin = os.environ.get("TLSID_INTEROP_TESTBIN")
        if not testbin and shutil.which("cargo"):
            log("building the rustls stand-in (cargo test --test interop --no-run)…")
            r = subprocess.run(["cargo", "test", "--test", "interop", "--no-run", "--message-format=json"],
                               cwd=REPO, capture_output=True, text=True)
            for line in r.stdout.splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "interop" \
                        and msg.get("executable"):
                    testbin = msg["executable"]
        if testbin:
            self.rustls_mode, self.testbin = "standin", testbin
            self.versions["rustls"] = "rustls 0.23 stand-in (tests/interop/rustls_peer.rs; `tlsid demo` not built)"
        else:
            self.unavailable["rustls"] = "neither `tlsid demo` nor the stand-in test binary is available"

    # --- servers ---

    def start_servers(self, stack, listeners):
        """listeners: [(name, Identity, version)] → list of Server."""
        if stack in self.unavailable:
            return []
        if stack == "go":
            argv = [self.go_bin, "server"] + [f"{n}|{i.dir}|{v}" for n, i, v in listeners]
            return [Server(stack, argv, names=[n for n, _, _ in listeners])]
        if stack == "python":
            argv = [sys.executable, os.path.join(HERE, "python", "peer.py"), "server"] + \
                   [f"{n}|{i.dir}|{v}" for n, i, v in listeners]
            return [Server(stack, argv, names=[n for n, _, _ in listeners])]
        if stack == "java":
            argv = ["java", "-Djava.net.preferIPv4Stack=true", "-cp", self.java_cp, "Interop", "server"] + \
                   [f"{n}|{i.dir}|{v}|{i.password_file}" for n, i, v in listeners]
            return [Server(stack, argv, names=[n for n, _, _ in listeners])]
        if stack == "rustls":
            servers = []
            for n, i, v in listeners:
                if self.rustls_mode == "demo":
                    # Exactly as in a pod, but on loopback; the port it got is read from its log.
                    argv = [self.tlsid_bin, "--log-format", "json", "demo", "server", "--cert-dir", i.dir,
                            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
                    s = Server(stack, argv, env=demo_env(), names=[n], demo=n)
                else:
                    env = dict(os.environ, TLSID_INTEROP_RUSTLS=json.dumps(
                        ["server", "--cert-dir", i.dir, "--listen", "127.0.0.1:0", "--tls", v]))
                    argv = [self.testbin, "rustls_peer", "--exact", "--nocapture", "--test-threads", "1"]
                    s = Server(stack, argv, env=env, names=[n], unnamed=n)
                servers.append(s)
            return servers
        raise ValueError(stack)

    # --- clients ---

    def start_agents(self):
        agents = {}
        if "go" not in self.unavailable:
            agents["go"] = Agent([self.go_bin, "client"])
        if "python" not in self.unavailable:
            agents["python"] = Agent([sys.executable, os.path.join(HERE, "python", "peer.py"), "client"])
        if "java" not in self.unavailable:
            agents["java"] = Agent(["java", "-Djava.net.preferIPv4Stack=true", "-Dhttp.keepAlive=false",
                                    "-cp", self.java_cp, "Interop", "client"])
        return agents

    def client(self, stack, agents, port, server_name, ident, version, nocert):
        """Run one client attempt: (ok, negotiated version or None, detail). Every client sends
        GET / over HTTP/1.1 (the tlsid demo server speaks HTTPS too)."""
        if stack in agents:
            return agents[stack].run(port, server_name, ident, version, nocert)
        if stack == "curl":
            pin = {"1.3": ["--tlsv1.3", "--tls-max", "1.3"], "1.2": ["--tlsv1.2", "--tls-max", "1.2"]}[version]
            argv = ["curl", "-sS", "-v", "--max-time", "10", "--cacert", os.path.join(ident.dir, "ca.crt"),
                    "--resolve", f"{server_name}:{port}:127.0.0.1", *pin]
            if not nocert:
                argv += ["--cert", os.path.join(ident.dir, "tls.crt"), "--key", os.path.join(ident.dir, "tls.key")]
            argv.append(f"https://{server_name}:{port}/")
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            m = re.search(r"SSL connection using (TLSv1\.[23])", r.stderr)
            ver = norm_version(m.group(1)) if m else None
            if r.returncode == 0 and answered(r.stdout):
                return True, ver, one_line(r.stdout)
            if r.returncode == 0:  # an HTTP response, but not a positive answer (e.g. the demo's 403)
                return False, ver, "response: " + one_line(r.stdout)
            errs = [l for l in r.stderr.splitlines() if l.startswith("curl:") or "alert" in l.lower()]
            return False, ver, " ".join(errs) or one_line(r.stderr[-300:])
        if stack == "openssl":
            pin = {"1.3": "-tls1_3", "1.2": "-tls1_2"}[version]
            argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name,
                    "-verify_hostname", server_name, "-verify_return_error", "-brief", "-ign_eof",
                    "-CAfile", os.path.join(ident.dir, "ca.crt"), pin]
            if not nocert:
                argv += ["-cert", os.path.join(ident.dir, "tls.crt"), "-cert_chain", os.path.join(ident.dir, "tls.crt"),
                         "-key", os.path.join(ident.dir, "tls.key")]
            request = f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
            r = subprocess.run(argv, input=request, capture_output=True, text=True, timeout=20)
            m = re.search(r"Protocol version: (TLSv1\.[23])", r.stderr)
            ver = norm_version(m.group(1)) if m else None
            body = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            if re.search(r"^HTTP/1\.[01] 2\d\d ", r.stdout, re.M) and answered(body):
                return True, ver, one_line(body)
            errs = [l for l in r.stderr.splitlines() if re.search(r"error|verify|alert", l, re.I)]
            return False, ver, one_line(" ".join(errs) or r.stderr[-300:] or f"exit {r.returncode}")
        if stack == "rustls":
            if self.rustls_mode == "demo":
                argv = [self.tlsid_bin, "--log-format", "json", "demo", "client", "--cert-dir", ident.dir,
                        "--connect", f"127.0.0.1:{port}", "--server-name", server_name, "--count", "1",
                        "--metrics-listen", "127.0.0.1:0"]
                try:
                    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=demo_env())
                except subprocess.TimeoutExpired as e:
                    err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
                    return False, None, "timed out: " + one_line(err[-300:])
                recs = [x for x in map(demo_record, r.stderr.splitlines()) if x]
                # One line per attempt: "mTLS handshake ok" (a 2xx; reply = the body), "mTLS handshake
                # failed", "request refused" (403) or "request failed" (another status, or not HTTP).
                hs = next((x for x in recs if x.get("message") in DEMO_CLIENT_RESULTS), None)
                if hs is None:
                    waiting = next((x for x in recs if x.get("message") == "waiting for valid credentials"), None)
                    return False, None, one_line(waiting.get("error") if waiting else (r.stdout + r.stderr)[-400:])
                ok = r.returncode == 0 and hs.get("message") == "mTLS handshake ok" and hs.get("result") == "ok"
                if ok:
                    return True, norm_version(hs.get("tls_version")), hs.get("reply", "")
                why = hs.get("reason", "")
                if hs.get("message") != "mTLS handshake failed":
                    why = f"{hs.get('message')} (HTTP status {hs.get('status', '?')}): {why}"
                return False, norm_version(hs.get("tls_version")), why
            env = dict(os.environ, TLSID_INTEROP_RUSTLS=json.dumps(
                ["client", "--cert-dir", ident.dir, "--connect", f"127.0.0.1:{port}", "--server-name", server_name,
                 "--count", "1", "--tls", version]))
            r = subprocess.run([self.testbin, "rustls_peer", "--exact", "--nocapture", "--test-threads", "1"],
                               capture_output=True, text=True, env=env, timeout=30)
            m = re.search(r"RESULT (ok|fail) (.*)$", r.stdout, re.M)  # after libtest's "test … ..."
            if not m:
                return False, None, one_line(r.stdout[-300:] + r.stderr[-300:])
            detail = m.group(2)
            vm = re.search(r"(TLSv1_[23])", detail)
            return m.group(1) == "ok", norm_version(vm.group(1)) if vm else None, detail
        raise ValueError(stack)

    def client_unsupported(self, client, server, nocert):
        """Why this client cannot run against this server at all, or None."""
        if client in self.unavailable:
            return self.unavailable[client]
        if server in self.unavailable:
            return self.unavailable[server]
        if nocert and client == "rustls":
            return "the rustls client always presents its certificate"
        return None


# === the matrix ===

@dataclass
class Cell:
    client: str
    server: str
    ident: str
    version: str
    status: str  # pass | FAIL | n/a
    detail: str = ""


@dataclass
class Negative:
    case: str
    judge: str  # client | server
    description: str
    stack: str
    version: str
    status: str  # rejected | NOT REJECTED | WRONG REASON | n/a
    verifier_error: str = ""
    peer_error: str = ""


@dataclass
class RolloverCell:
    case: str  # root | intermediate
    judge: str  # client | server: the side the stack under test plays (it verifies the other's leaf)
    stack: str
    leaf: str  # old | new
    bundle: str  # old | overlap | new
    expected: str  # verified | refused
    status: str = "n/a"  # pass (the outcome is the expected one) | FAIL | n/a
    outcome: str = ""  # verified | refused | accepted | wrong reason | …
    detail: str = ""
    verifier_error: str = ""
    peer_error: str = ""


def known_unsupported(client, server, key_type, version):
    for c, s, k, v, reason in KNOWN_UNSUPPORTED:
        if (c in (None, client)) and (s in (None, server)) and (k in (None, key_type)) and (v in (None, version)):
            return reason
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", action="append", required=True, help="directory of identities (repeatable)")
    ap.add_argument("--out", help="write the markdown matrix here (it is printed as well)")
    ap.add_argument("--work", default=os.path.join(REPO, "target", "interop"), help="build cache")
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--stacks", default=",".join(CLIENT_STACKS), help="subset of stacks to run")
    ap.add_argument("--keys", default="", help="comma-separated key types to run (default: all)")
    ap.add_argument("--versions", default=",".join(VERSIONS))
    ap.add_argument("--rustls", choices=["auto", "demo", "standin"], default="auto",
                    help="rustls column: the real `tlsid demo` ($TLSID_BIN or target/debug/tlsid) or the stand-in")
    ap.add_argument("--no-negatives", action="store_true")
    ap.add_argument("--require-all-stacks", action="store_true",
                    help="a selected stack that cannot run is a set-up error (exit 2), not a column of n/a")
    ap.add_argument("--update-doc", metavar="FILE",
                    help="replace everything after the '<!-- matrix -->' line of FILE (docs/interop.md) with the result")
    args = ap.parse_args()
    started = time.time()

    ids = load_identities(args.identities)
    wanted_keys = set(filter(None, args.keys.split(",")))
    matrix_ids = [i for i in ids if i.role == "matrix" and (not wanted_keys or i.key_type in wanted_keys)]
    matrix_ids.sort(key=lambda i: (i.chain != "root", KEY_ORDER.index(i.key_type) if i.key_type in KEY_ORDER else 99))
    by_role = {i.role: i for i in ids if i.role not in ("matrix", "rollover")}
    rollover = {}
    for i in ids:
        if i.role == "rollover":
            r = i.meta.get("rollover") or {}
            rollover[(r.get("case"), r.get("leaf"), r.get("bundle"))] = i
    versions = [v for v in args.versions.split(",") if v in VERSIONS]
    stacks = set(args.stacks.split(","))
    server_stacks = [s for s in SERVER_STACKS if s in stacks]
    client_stacks = [s for s in CLIENT_STACKS if s in stacks]
    if not matrix_ids and not rollover:
        die("no identities with role matrix or rollover found")
    rollover_cases = [c for c, _ in ROLLOVER_CASES if any(k[0] == c for k in rollover)]
    for case in rollover_cases:
        missing = [f"{leaf} leaf with the {bundle} bundle" for leaf in ROLLOVER_LEAVES for bundle in ROLLOVER_BUNDLES
                   if (case, leaf, bundle) not in rollover]
        if missing:
            die(f"rollover case {case}: no identity for the " + ", ".join(missing))
    unknown = sorted({k[0] for k in rollover} - set(rollover_cases))
    if unknown:
        die(f"rollover identities of unknown case(s) {', '.join(map(str, unknown))}")
    # The rollover cells are pinned to TLS 1.3 (chain building does not depend on the version).
    rollover_version = "1.3" if "1.3" in versions else versions[0]
    base = next((i for i in matrix_ids if i.key_type == "ecdsa-p256" and i.chain == "root"),
                matrix_ids[0] if matrix_ids else None)

    st = Stacks(args)
    st.setup(stacks)
    log("stacks: " + "; ".join(f"{k}: {v}" for k, v in sorted(st.versions.items())))
    for k, v in st.unavailable.items():
        log(f"unavailable: {k}: {v}")
    missing = {k: v for k, v in st.unavailable.items() if k in stacks}
    if args.require_all_stacks and missing:
        die("--require-all-stacks: " + "; ".join(f"{k}: {v}" for k, v in sorted(missing.items())))

    # Listeners: every matrix identity per version, plus the bad server identities for client-judged
    # negatives (on the presenter stack only).
    listeners = {s: [] for s in server_stacks}
    ver_any = st.rustls_mode == "demo"  # the demo server has no TLS version option
    for s in server_stacks:
        for i in matrix_ids:
            for v in (["any"] if (s == "rustls" and ver_any) else versions):
                listeners[s].append((f"{i.name}@{v}", i, v))
    negatives_on = not args.no_negatives and base is not None
    presenter = NEGATIVE_PRESENTER["client"]
    if negatives_on and presenter in listeners:
        for case, judge, _, _ in NEGATIVES:
            if judge == "client" and case in by_role:
                for v in versions:
                    listeners[presenter].append((f"{by_role[case].name}@{v}", by_role[case], v))
    # Rollover: every state on every server stack (the stack under test as server uses it; the
    # presenting Go server uses the overlap ones).
    for s in server_stacks:
        for i in rollover.values():
            v = "any" if (s == "rustls" and ver_any) else rollover_version
            listeners[s].append((f"{i.name}@{v}", i, v))

    servers = {}
    agents = {}
    procs = []
    try:
        log("starting servers…")
        for s in server_stacks:
            for proc in st.start_servers(s, listeners[s]):
                procs.append(proc)
        for p in procs:
            p.wait_ready()
        for s in server_stacks:
            for name, _, _ in listeners[s]:
                servers[(s, name)] = next(p for p in procs if p.stack == s and name in p.events)
        agents = st.start_agents()
        log(f"servers up ({len(servers)} listeners) in {time.time() - started:.1f}s")

        cells = []
        total = len(client_stacks) * len(server_stacks) * len(matrix_ids) * len(versions)
        n = 0
        for ident in matrix_ids:
            for server in server_stacks:
                for version in versions:
                    for client in client_stacks:
                        n += 1
                        reason = st.client_unsupported(client, server, False) or \
                            known_unsupported(client, server, ident.key_type, version)
                        if not reason and client == "rustls" and server == "rustls" and ver_any and version != "1.3":
                            reason = "the tlsid demo has no TLS version option (both sides negotiate 1.3)"
                        if reason:
                            cells.append(Cell(client, server, ident.label, version, "n/a", reason))
                            continue
                        lname = f"{ident.name}@{'any' if (server == 'rustls' and ver_any) else version}"
                        srv = servers[(server, lname)]
                        if lname in srv.loadfail:
                            cells.append(Cell(client, server, ident.label, version, "FAIL",
                                              f"server: {srv.loadfail[lname]}"))
                            log(f"[{n}/{total}] {ident.label:28} {client:>8} → {server:<7} TLS {version}: FAIL"
                                f" (server could not load the identity)")
                            continue
                        srv.drain(lname)
                        t0 = time.time()
                        ok, got_ver, detail = st.client(client, agents, srv.ports[lname], args.server_name, ident,
                                                        version, False)
                        s_ok, s_text = srv.event(lname)
                        problems = []
                        if not ok:
                            problems.append(f"client: {one_line(detail)}")
                        if s_ok is False:
                            problems.append(f"server: {one_line(s_text)}")
                        elif ok and s_ok is None:
                            problems.append(f"server: no verified client certificate logged {one_line(s_text)}")
                        if ok and got_ver and got_ver != version:
                            problems.append(f"negotiated TLS {got_ver}, not {version}")
                        status = "FAIL" if problems else "pass"
                        cells.append(Cell(client, server, ident.label, version, status,
                                          "; ".join(problems) if problems else one_line(detail, 120)))
                        log(f"[{n}/{total}] {ident.label:28} {client:>8} → {server:<7} TLS {version}: {status}"
                            f" ({time.time() - t0:.2f}s){'  ' + '; '.join(problems) if problems else ''}")

        negs = []
        if negatives_on:
            negs = run_negatives(st, agents, servers, server_stacks, client_stacks, versions, by_role, base,
                                 args.server_name)
        rollover_started = time.time()
        ro_cells = []
        if rollover:
            ro_cells = run_rollover(st, agents, servers, server_stacks, client_stacks, rollover_version,
                                    rollover_cases, rollover, args.server_name)
        rollover_secs = time.time() - rollover_started
    finally:
        for a in agents.values():
            a.stop()
        for p in procs:
            p.stop()

    elapsed = time.time() - started
    sections = {}
    if matrix_ids:
        sections["matrix"] = render(cells, negs, st, matrix_ids, server_stacks, client_stacks, versions, elapsed,
                                    by_role)
    if ro_cells:
        sections["rollover"] = render_rollover(ro_cells, st, rollover_cases, rollover, server_stacks, client_stacks,
                                               rollover_version, rollover_secs)
    md = "\n".join(sections.values())
    print(md)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(md)
        log(f"wrote {args.out}")
    if args.update_doc:
        update_doc(args.update_doc, sections)
    failed = [c for c in cells if c.status == "FAIL"] + [x for x in negs if x.status not in ("rejected", "n/a")] + \
        [c for c in ro_cells if c.status == "FAIL"]
    log(f"{len(cells)} cells, {len(negs)} negative checks, {len(ro_cells)} rollover cells, {len(failed)} failures, "
        f"{elapsed:.0f}s")
    sys.exit(1 if failed else 0)


def update_doc(path, sections):
    """Replace the generated parts of docs/interop.md: the matrix is everything after the
    `<!-- matrix -->` line, the rollover section what lies between `<!-- rollover -->` and
    `<!-- /rollover -->`. Locked, as the matrix and the rollover test may finish at the same time."""
    import fcntl
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        doc = f.read()
        if "rollover" in sections:
            begin, end = "<!-- rollover -->", "<!-- /rollover -->"
            if begin not in doc or end not in doc:
                die(f"{path} has no {begin} … {end} lines")
            head, rest = doc.split(begin, 1)
            doc = head + begin + "\n\n" + sections["rollover"].rstrip("\n") + "\n\n" + end + rest.split(end, 1)[1]
        if "matrix" in sections:
            marker = "<!-- matrix -->"
            if marker not in doc:
                die(f"{path} has no {marker} line")
            doc = doc.split(marker)[0] + marker + "\n\n" + sections["matrix"]
        f.seek(0)
        f.write(doc)
        f.truncate()
    log(f"updated {path}")


def run_negatives(st, agents, servers, server_stacks, client_stacks, versions, by_role, base, server_name):
    out = []
    for case, judge, desc, pattern in NEGATIVES:
        bad = by_role.get(case) if case != "no-client-cert" else base
        verifiers = client_stacks if judge == "client" else server_stacks
        for stack in verifiers:
            for version in versions:
                if bad is None:
                    out.append(Negative(case, judge, desc, stack, version, "n/a", f"no identity with role {case}"))
                    continue
                presenter = NEGATIVE_PRESENTER[judge]
                if judge == "client":
                    client, server = stack, presenter
                    lname = f"{bad.name}@{version}"
                    client_ident, nocert = base, False
                else:
                    client, server = presenter, stack
                    lname = f"{base.name}@{'any' if (stack == 'rustls' and st.rustls_mode == 'demo') else version}"
                    client_ident, nocert = (base, True) if case == "no-client-cert" else (bad, False)
                reason = st.client_unsupported(client, server, nocert)
                if reason or (server, lname) not in servers:
                    out.append(Negative(case, judge, desc, stack, version, "n/a", reason or "no listener"))
                    continue
                srv = servers[(server, lname)]
                if lname in srv.loadfail:
                    out.append(Negative(case, judge, desc, stack, version, "n/a",
                                        f"{server} server could not load {lname}: {srv.loadfail[lname]}"))
                    continue
                srv.drain(lname)
                ok, _, detail = st.client(client, agents, srv.ports[lname], server_name, client_ident, version,
                                          nocert)
                s_ok, s_text = srv.event(lname)
                verifier_err, peer_err = (detail, s_text) if judge == "client" else (s_text, detail)
                if ok:
                    status = "NOT REJECTED"
                elif judge == "server" and s_ok is True:
                    status = "NOT REJECTED"  # the server accepted; the client failed for another reason
                elif re.search(pattern, verifier_err or "", re.I):
                    status = "rejected"
                else:
                    status = "WRONG REASON"
                out.append(Negative(case, judge, desc, stack, version, status, one_line(verifier_err, 400),
                                    one_line(peer_err, 200)))
                log(f"negative {case:14} judged by {judge} {stack:>8} TLS {version}: {status}"
                    f"  [{one_line(verifier_err, 140)}]")
    return out


def run_rollover(st, agents, servers, server_stacks, client_stacks, version, cases, rollover, server_name):
    """Each stack, as client and as server, verifies the old and the new leaf against the old, the
    overlap and the new bundle. The stack under test holds the judged state (that leaf, that bundle);
    its peer presents the same leaf and trusts the overlap bundle, so it accepts whatever is sent and
    the outcome is the judged stack's verdict alone."""
    out = []
    total = len(cases) * (len(client_stacks) + len(server_stacks)) * len(ROLLOVER_LEAVES) * len(ROLLOVER_BUNDLES)
    n = 0
    for case in cases:
        for judge, stacks in (("client", client_stacks), ("server", server_stacks)):
            presenter = NEGATIVE_PRESENTER[judge]
            for stack in stacks:
                for leaf in ROLLOVER_LEAVES:
                    for bundle in ROLLOVER_BUNDLES:
                        n += 1
                        expected = "verified" if (leaf, bundle) in ROLLOVER_TRUSTED else "refused"
                        cell = RolloverCell(case, judge, stack, leaf, bundle, expected)
                        out.append(cell)
                        judged, presented = rollover[(case, leaf, bundle)], rollover[(case, leaf, "overlap")]
                        if judge == "client":
                            client, server, client_ident, server_ident = stack, presenter, judged, presented
                        else:
                            client, server, client_ident, server_ident = presenter, stack, presented, judged
                        lname = f"{server_ident.name}@{'any' if (server == 'rustls' and st.rustls_mode == 'demo') else version}"
                        reason = st.client_unsupported(client, server, False)
                        if not reason and (server, lname) not in servers:
                            reason = f"{STACK_TITLE[server]} is not among the selected stacks (--stacks)"
                        if reason:
                            cell.detail = reason
                            continue
                        srv = servers[(server, lname)]
                        if lname in srv.loadfail:
                            cell.status, cell.outcome = "FAIL", "not run"
                            cell.detail = f"{server} server could not load {lname}: {srv.loadfail[lname]}"
                            continue
                        srv.drain(lname)
                        ok, got_ver, detail = st.client(client, agents, srv.ports[lname], server_name, client_ident,
                                                        version, False)
                        s_ok, s_text = srv.event(lname)
                        verifier_err, peer_err = (detail, s_text) if judge == "client" else (s_text, detail)
                        cell.verifier_error, cell.peer_error = one_line(verifier_err, 400), one_line(peer_err, 200)
                        judged_accepted = ok if judge == "client" else s_ok is True
                        problems = []
                        if ok and s_ok is True:
                            cell.outcome = "verified"
                            if got_ver and got_ver != version:
                                problems.append(f"negotiated TLS {got_ver}, not {version}")
                        elif judged_accepted:
                            cell.outcome = "accepted"
                            problems.append(f"the {judge} accepted the leaf but the connection failed: "
                                            f"client: {one_line(detail)}; server: {one_line(s_text)}")
                        elif re.search(PRESENTER_OWN_REFUSAL[presenter], peer_err or ""):
                            cell.outcome = "peer refused"
                            problems.append(f"the presenting {STACK_TITLE[presenter]} {('server', 'client')[judge == 'server']} "
                                            f"refused first: {one_line(peer_err)}")
                        elif re.search(UNKNOWN_ISSUER, verifier_err or "", re.I):
                            cell.outcome = "refused"
                        elif expected == "refused":
                            cell.outcome = "wrong reason"
                            problems.append(f"refused, but not as an unknown issuer: {one_line(verifier_err)}")
                        else:
                            cell.outcome = "failed"
                            problems.append(f"client: {one_line(detail)}; server: {one_line(s_text)}")
                        if cell.outcome != expected and not problems:
                            problems.append(f"expected {expected}")
                        cell.status = "FAIL" if (problems or cell.outcome != expected) else "pass"
                        cell.detail = "; ".join(problems) if problems else one_line(verifier_err, 160)
                        log(f"[rollover {n}/{total}] {case:12} {leaf} leaf / {bundle:7} bundle, judged by {judge} "
                            f"{stack:>8}: {cell.outcome} (expected {expected}) {cell.status}"
                            f"{'  ' + cell.detail if cell.status == 'FAIL' else ''}")
    return out


def append_notes(L, notes):
    """The cells a stack cannot run, each with its reason, under a "Not supported" heading."""
    if notes:
        L.append("Not supported:\n")
        for text, k in notes.items():
            L.append(f"- [{k}] {text}")
        L.append("")


def render_rollover(cells, st, cases, rollover, server_stacks, client_stacks, version, secs):
    L = []
    ran = [c for c in cells if c.status != "n/a"]
    passed = [c for c in ran if c.status == "pass"]
    L.append("## CA rollover matrix\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, TLS {version}, {secs:.0f}s: "
             f"**{len(passed)} of {len(cells)} cells as expected** "
             f"({sum(c.outcome == 'verified' for c in passed)} verified, "
             f"{sum(c.outcome == 'refused' for c in passed)} refused as an unknown issuer), "
             f"**{len(ran) - len(passed)} not**, {len(cells) - len(ran)} n/a.\n")
    L.append("Stacks: " + "; ".join(f"{STACK_TITLE[s]}: {st.versions.get(s) or 'unavailable: ' + st.unavailable.get(s, '?')}"
                                    for s in CLIENT_STACKS) + ".\n")
    sources = sorted({i.meta.get("source", "unspecified") for i in rollover.values()})
    L.append(f"Identities: {', '.join(sorted(i.name for i in rollover.values()))} (source: {'; '.join(sources)}).\n")
    L.append(f"Each cell: the stack verifies the peer's leaf against that bundle, as client (the "
             f"{STACK_TITLE[NEGATIVE_PRESENTER['client']]} server presents the leaf) and as server (the "
             f"{STACK_TITLE[NEGATIVE_PRESENTER['server']]} client presents it); the presenting peer trusts the overlap "
             "bundle. ✅ the outcome is the expected one (a refusal counts only when the stack's own error names an "
             "unknown issuer or an untrusted chain), ❌ it is not, n/a not supported (reason below).\n")
    notes = {}

    def mark(c):
        if c.status == "n/a":
            k = notes.setdefault(c.detail, len(notes) + 1)
            return f"n/a[{k}]"
        return ("✅ " if c.status == "pass" else "❌ ") + c.outcome

    titles = dict(ROLLOVER_CASES)
    for case in cases:
        new = "B" if case == "root" else "C"
        names = {"old": "{A}", "overlap": "{A," + new + "}", "new": "{" + new + "}"}
        L.append(f"### {titles[case]}\n")
        cols = [(leaf, bundle) for leaf in ROLLOVER_LEAVES for bundle in ROLLOVER_BUNDLES]
        L.append("| stack | verifies as | " + " | ".join(f"{leaf} leaf, {bundle} bundle {names[bundle]}"
                                                        for leaf, bundle in cols) + " |")
        L.append("|---|---|" + "---|" * len(cols))
        L.append("| *expected* | | " + " | ".join(
            "*verified*" if c in ROLLOVER_TRUSTED else "*refused*" for c in cols) + " |")
        for judge, stacks in (("client", client_stacks), ("server", server_stacks)):
            for stack in stacks:
                row = [STACK_TITLE[stack], judge]
                for leaf, bundle in cols:
                    c = next((x for x in cells if (x.case, x.judge, x.stack, x.leaf, x.bundle) ==
                              (case, judge, stack, leaf, bundle)), None)
                    row.append(mark(c) if c else "")
                L.append("| " + " | ".join(row) + " |")
        L.append("")
    append_notes(L, notes)
    fails = [c for c in cells if c.status == "FAIL"]
    if fails:
        L.append("### Rollover failures\n")
        for c in fails:
            L.append(f"- {c.case}: {c.leaf} leaf, {c.bundle} bundle, {STACK_TITLE[c.stack]} as {c.judge}: "
                     f"{c.outcome}, expected {c.expected}: {c.detail}")
        L.append("")
    refusals = [c for c in cells if c.expected == "refused" and c.status != "n/a"]
    if refusals:
        L.append("### Rollover refusals, in each stack's own words\n")
        L.append("| case | stack | as | old leaf, new bundle | new leaf, old bundle |")
        L.append("|---|---|---|---|---|")
        for case in cases:
            for judge, stacks in (("client", client_stacks), ("server", server_stacks)):
                for stack in stacks:
                    row = [case, STACK_TITLE[stack], judge]
                    for leaf, bundle in (("old", "new"), ("new", "old")):
                        c = next((x for x in refusals if (x.case, x.judge, x.stack, x.leaf, x.bundle) ==
                                  (case, judge, stack, leaf, bundle)), None)
                        row.append("" if c is None else one_line(c.verifier_error, 160).replace("|", "/"))
                    L.append("| " + " | ".join(row) + " |")
        L.append("")
    return "\n".join(L) + "\n"


def render(cells, negs, st, matrix_ids, server_stacks, client_stacks, versions, elapsed, by_role):
    L = []
    passed = sum(c.status == "pass" for c in cells)
    failed = sum(c.status == "FAIL" for c in cells)
    na = sum(c.status == "n/a" for c in cells)
    rejected = sum(n.status == "rejected" for n in negs)
    bad_neg = sum(n.status not in ("rejected", "n/a") for n in negs)
    L.append("## Interop matrix\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} in {elapsed:.0f}s: "
             f"**{passed} pass, {failed} fail, {na} n/a** of {len(cells)} cells; "
             f"negative cases: **{rejected} rejected as expected, {bad_neg} not**.\n")
    L.append("Stacks:\n")
    for s in CLIENT_STACKS:
        L.append(f"- {STACK_TITLE[s]}: {st.versions.get(s) or 'unavailable: ' + st.unavailable.get(s, '?')}")
    sources = sorted({i.meta.get('source', 'unspecified') for i in matrix_ids})
    L.append(f"\nIdentities: {', '.join(i.name for i in matrix_ids)} (source: {'; '.join(sources)}).")
    if by_role:
        L.append("Negative-case identities: " + "; ".join(
            f"{role}: {i.name} ({i.meta.get('source', 'unspecified')})" for role, i in sorted(by_role.items())) + ".")
    L.append("Each cell: client stack (row) connects to server stack (column) over TLS version, both sides "
             "presenting the identity of that key type; ✅ pass, ❌ fail, n/a not supported (reason below).\n")
    notes = {}

    def mark(c):
        if c.status == "pass":
            return "✅"
        if c.status == "FAIL":
            return "❌"
        k = notes.setdefault(c.detail, len(notes) + 1)
        return f"n/a[{k}]"

    for ident in matrix_ids:
        L.append(f"### {ident.label}\n")
        head = "| client ↓ / server → | " + " | ".join(f"{STACK_TITLE[s]} {v}" for s in server_stacks for v in versions) + " |"
        L.append(head)
        L.append("|" + "---|" * (1 + len(server_stacks) * len(versions)))
        for c in client_stacks:
            row = [STACK_TITLE[c]]
            for s in server_stacks:
                for v in versions:
                    cell = next((x for x in cells if x.client == c and x.server == s and x.ident == ident.label
                                 and x.version == v), None)
                    row.append(mark(cell) if cell else "")
            L.append("| " + " | ".join(row) + " |")
        L.append("")
    append_notes(L, notes)
    fails = [c for c in cells if c.status == "FAIL"]
    if fails:
        L.append("### Failures\n")
        for c in fails:
            L.append(f"- {c.ident}, {STACK_TITLE[c.client]} → {STACK_TITLE[c.server]}, TLS {c.version}: {c.detail}")
        L.append("")
    if negs:
        L.append("### Negative cases\n")
        L.append(f"The bad server certificate is presented by the {STACK_TITLE[NEGATIVE_PRESENTER['client']]} server, "
                 f"the bad client certificate by the {STACK_TITLE[NEGATIVE_PRESENTER['server']]} client; the stack named "
                 "is the one that must refuse it, and the error shown is that stack's own.\n")
        L.append("| case | refused by | stack | " + " | ".join(f"TLS {v}" for v in versions) + " | error (TLS " + versions[0] + ") |")
        L.append("|---|---|---|" + "---|" * len(versions) + "---|")
        seen = []
        for n in negs:
            key = (n.case, n.judge, n.stack)
            if key in seen:
                continue
            seen.append(key)
            row = [x for x in negs if (x.case, x.judge, x.stack) == key]
            marks = []
            for v in versions:
                x = next((r for r in row if r.version == v), None)
                marks.append("" if x is None else {"rejected": "✅ rejected", "n/a": "n/a"}.get(x.status, "❌ " + x.status))
            first = row[0]
            err = first.verifier_error if first.status != "n/a" else first.verifier_error
            L.append(f"| {n.description} | {n.judge} | {STACK_TITLE[n.stack]} | " + " | ".join(marks) +
                     f" | {one_line(err, 220).replace('|', '/')} |")
        L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
