// Java JSSE peers for the tlsid interop matrix. Both read the identity exactly as a Java workload
// would from the mounted Secret: keystore.p12 (PrivateKeyEntry "certificate") and truststore.p12
// (trustedCertEntry "ca"), PKCS12, with the password from the mounted password file. No conversion.
//
//   java Interop server NAME|DIR|TLS|PASSWORDFILE ...   one SSLServerSocket per argument on 127.0.0.1:0;
//        prints "LISTEN NAME PORT", then per connection "CONN NAME ok VERSION PEER" / "CONN NAME fail ERROR"
//        ("LOADFAIL NAME ERROR" when the identity cannot be loaded)
//   java Interop client    reads "ID\tPORT\tSERVERNAME\tDIR\tTLS\tNOCERT\tPASSWORDFILE" lines from stdin;
//        for each, an HttpsURLConnection GET https://SERVERNAME:PORT/ (as in the seed tutorial's client; a
//        status other than 200 is a failure); prints "RESULT\tID\tok|fail\tVERSION\tDETAIL"
//
// The server answers a GET (curl, the HTTP clients, the tlsid demo client) with HTTP/1.1 200 and a text
// greeting, and a client that sends nothing with the greeting line alone.
//
// One JVM serves every case: JVM start-up is the slow part of Java in the matrix.
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.*;

public class Interop {
    static synchronized void emit(String line) {
        System.out.println(line.replace('\n', ' ').replace('\r', ' '));
        System.out.flush();
    }

    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (sb.length() > 0) sb.append(" <- ");
            sb.append(c.getClass().getName()).append(": ").append(c.getMessage());
            if (c.getCause() == c) break;
        }
        return sb.toString();
    }

    static String[] protocols(String v) {
        switch (v) {
            case "1.2": return new String[] {"TLSv1.2"};
            case "1.3": return new String[] {"TLSv1.3"};
            default: return new String[] {"TLSv1.3", "TLSv1.2"};
        }
    }

    static char[] password(String file) throws IOException {
        return new String(Files.readAllBytes(Paths.get(file)), StandardCharsets.UTF_8).trim().toCharArray();
    }

    static KeyStore load(Path p, char[] pw) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(p)) {
            ks.load(in, pw);
        }
        return ks;
    }

    static SSLContext context(String dir, String pwFile, boolean withKey) throws Exception {
        char[] pw = password(pwFile);
        KeyManager[] kms = null;
        if (withKey) {
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(load(Paths.get(dir, "keystore.p12"), pw), pw);
            kms = kmf.getKeyManagers();
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(load(Paths.get(dir, "truststore.p12"), pw));
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kms, tmf.getTrustManagers(), null);
        return ctx;
    }

    // ===== server =====

    static void serve(String spec) throws Exception {
        String[] p = spec.split("\\|");
        String name = p[0];
        SSLContext ctx;
        try {
            ctx = context(p[1], p[3], true);
        } catch (Exception e) {
            emit("LOADFAIL " + name + " cannot load the identity: " + describe(e));
            return;
        }
        SSLServerSocket ss = (SSLServerSocket) ctx.getServerSocketFactory()
                .createServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        ss.setNeedClientAuth(true);
        ss.setEnabledProtocols(protocols(p[2]));
        emit("LISTEN " + name + " " + ss.getLocalPort());
        Thread t = new Thread(() -> {
            while (true) {
                try {
                    Socket s = ss.accept();
                    new Thread(() -> handle(name, (SSLSocket) s)).start();
                } catch (IOException e) {
                    emit("CONN " + name + " fail accept: " + describe(e));
                }
            }
        });
        t.start();
    }

    static void handle(String name, SSLSocket s) {
        try (SSLSocket sock = s) {
            sock.setSoTimeout(5000);
            sock.startHandshake();
            SSLSession session = sock.getSession();
            String peer = ((X509Certificate) session.getPeerCertificates()[0]).getSubjectX500Principal().getName();
            emit("CONN " + name + " ok " + session.getProtocol() + " " + peer);
            // An HTTP/1.1 response when the client sends a request within a moment (every client of the
            // matrix), else a one-line greeting.
            sock.setSoTimeout(400);
            StringBuilder head = new StringBuilder();
            InputStream in = sock.getInputStream();
            try {
                int b;
                while (head.indexOf("\r\n\r\n") < 0 && (b = in.read()) >= 0) head.append((char) b);
            } catch (SocketTimeoutException e) {
                // silent client
            }
            sock.setSoTimeout(5000);
            String body = "hello " + peer + " from java\n";
            String resp = head.toString().startsWith("GET ")
                    ? "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + body.length()
                            + "\r\nConnection: close\r\n\r\n" + body
                    : body;
            OutputStream out = sock.getOutputStream();
            out.write(resp.getBytes(StandardCharsets.ISO_8859_1));
            out.flush();
        } catch (Exception e) {
            emit("CONN " + name + " fail " + describe(e));
        }
    }

    // ===== client =====

    /** Pins the TLS versions of each socket and remembers the last one (to report the version). */
    static final class PinnedFactory extends SSLSocketFactory {
        final SSLSocketFactory inner;
        final String[] protocols;
        volatile SSLSocket last;

        PinnedFactory(SSLSocketFactory inner, String[] protocols) { this.inner = inner; this.protocols = protocols; }

        Socket pin(Socket s) {
            SSLSocket ssl = (SSLSocket) s;
            ssl.setEnabledProtocols(protocols);
            last = ssl;
            return ssl;
        }

        public String[] getDefaultCipherSuites() { return inner.getDefaultCipherSuites(); }
        public String[] getSupportedCipherSuites() { return inner.getSupportedCipherSuites(); }
        public Socket createSocket(Socket s, String h, int p, boolean a) throws IOException { return pin(inner.createSocket(s, h, p, a)); }
        public Socket createSocket(String h, int p) throws IOException { return pin(inner.createSocket(h, p)); }
        public Socket createSocket(String h, int p, InetAddress l, int lp) throws IOException { return pin(inner.createSocket(h, p, l, lp)); }
        public Socket createSocket(InetAddress h, int p) throws IOException { return pin(inner.createSocket(h, p)); }
        public Socket createSocket(InetAddress h, int p, InetAddress l, int lp) throws IOException { return pin(inner.createSocket(h, p, l, lp)); }
        public Socket createSocket() throws IOException { return pin(inner.createSocket()); }
    }

    static void attempt(String[] f) {
        String id = f[0];
        String version = "-";
        try {
            boolean nocert = f[5].equals("1");
            SSLContext ctx = context(f[3], f[6], !nocert);
            PinnedFactory factory = new PinnedFactory(ctx.getSocketFactory(), protocols(f[4]));
            URL url = new URL("https://" + f[2] + ":" + f[1] + "/");
            HttpsURLConnection conn = (HttpsURLConnection) url.openConnection();
            conn.setSSLSocketFactory(factory);
            conn.setConnectTimeout(5000);
            conn.setReadTimeout(10000);
            conn.setRequestProperty("Connection", "close");
            int status = conn.getResponseCode();
            if (factory.last != null) version = factory.last.getSession().getProtocol();
            StringBuilder body = new StringBuilder();
            try (BufferedReader in = new BufferedReader(new InputStreamReader(conn.getInputStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = in.readLine()) != null) body.append(line);
            }
            conn.disconnect();
            if (status != 200) throw new IOException("HTTP status " + status);
            emit("RESULT\t" + id + "\tok\t" + version + "\t" + body);
        } catch (Exception e) {
            emit("RESULT\t" + id + "\tfail\t" + version + "\t" + describe(e));
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length >= 1 && args[0].equals("server")) {
            for (int i = 1; i < args.length; i++) serve(args[i]);
        } else if (args.length == 1 && args[0].equals("client")) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                String[] f = line.split("\t", -1);
                if (f.length < 7) { emit("RESULT\t?\tfail\t-\tbad case line " + line); continue; }
                attempt(f);
            }
        } else {
            System.err.println("usage: Interop server NAME|DIR|TLS|PASSWORDFILE... | Interop client");
            System.exit(2);
        }
    }
}
