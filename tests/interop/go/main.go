// Go crypto/tls peers for the tlsid interop matrix, configured as in the seed tutorial's mTLS server
// and client (tls.LoadX509KeyPair, trust from ca.crt, RequireAndVerifyClientCert; the client is
// net/http).
//
//	interop server NAME|DIR|TLS ...   one listener per argument on 127.0.0.1:0; prints "LISTEN NAME PORT",
//	                                  then per connection "CONN NAME ok VERSION PEER" or "CONN NAME fail ERROR"
//	                                  ("LOADFAIL NAME ERROR" when the identity cannot be loaded)
//	interop client                    reads cases "ID\tPORT\tSERVERNAME\tDIR\tTLS\tNOCERT\tPWFILE" from stdin,
//	                                  does a GET over net/http as in the seed (a non-200 status is a failure) and
//	                                  prints "RESULT\tID\tok|fail\tVERSION\tDETAIL" for each
//
// The server answers a GET (curl, the HTTP clients, the tlsid demo client) with HTTP/1.1 200 and a text
// greeting, and a client that sends nothing (openssl s_client without input) with the greeting line alone.
//
// DIR is a mounted kubernetes.io/tls Secret: tls.crt (leaf + intermediates), tls.key, ca.crt (roots).
// TLS is 1.2, 1.3 or any.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

var outMu sync.Mutex

func emit(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	line := fmt.Sprintf(format, args...)
	fmt.Println(strings.NewReplacer("\n", " ", "\r", " ").Replace(line))
}

func versions(v string) (uint16, uint16) {
	switch v {
	case "1.2":
		return tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		return tls.VersionTLS13, tls.VersionTLS13
	}
	return tls.VersionTLS12, tls.VersionTLS13
}

func roots(dir string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificates in %s/ca.crt", dir)
	}
	return pool, nil
}

// respond answers one accepted connection after its handshake: an HTTP/1.1 response when the client
// sends a request within a moment (every client of the matrix), else a one-line greeting.
func respond(conn *tls.Conn, peer, stack string) {
	conn.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	var head []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(head), "\r\n\r\n") {
		n, err := conn.Read(buf)
		head = append(head, buf[:n]...)
		if err != nil {
			break
		}
	}
	body := fmt.Sprintf("hello %s from %s\n", peer, stack)
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if strings.HasPrefix(string(head), "GET ") {
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	} else {
		io.WriteString(conn, body)
	}
	conn.CloseWrite()
}

func serve(spec string) {
	parts := strings.Split(spec, "|")
	if len(parts) < 3 {
		log.Fatalf("listener spec %q is not NAME|DIR|TLS", spec)
	}
	name, dir, v := parts[0], parts[1], parts[2]
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		emit("LOADFAIL %s cannot load the identity: %v", name, err)
		return
	}
	pool, err := roots(dir)
	if err != nil {
		emit("LOADFAIL %s cannot load the identity: %v", name, err)
		return
	}
	minV, maxV := versions(v)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   minV,
		MaxVersion:   maxV,
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		log.Fatal(err)
	}
	emit("LISTEN %s %d", name, ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			emit("CONN %s fail accept: %v", name, err)
			continue
		}
		go func(conn *tls.Conn) {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if err := conn.Handshake(); err != nil {
				emit("CONN %s fail %v", name, err)
				return
			}
			st := conn.ConnectionState()
			peer := st.PeerCertificates[0].Subject.String()
			emit("CONN %s ok %s %s", name, tls.VersionName(st.Version), peer)
			respond(conn, peer, "go")
		}(c.(*tls.Conn))
	}
}

func attempt(fields []string) (string, string, error) {
	port, serverName, dir, v, nocert := fields[1], fields[2], fields[3], fields[4], fields[5] == "1"
	pool, err := roots(dir)
	if err != nil {
		return "", "", err
	}
	minV, maxV := versions(v)
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: minV, MaxVersion: maxV}
	if !nocert {
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
		if err != nil {
			return "", "", err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var version string
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		TLSClientConfig:   cfg,
		DisableKeepAlives: true,
		// The URL names the server as a pod would (https://NAME:PORT/); the matrix only uses loopback.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, "127.0.0.1:"+port)
		},
	}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + net.JoinHostPort(serverName, port) + "/")
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	if resp.TLS != nil {
		version = tls.VersionName(resp.TLS.Version)
	}
	if resp.StatusCode != 200 {
		return version, "", fmt.Errorf("HTTP status %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return version, strings.TrimSpace(string(body)), nil
}

func clientLoop() {
	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		fields := strings.Split(scanner.Text(), "\t")
		if len(fields) < 6 {
			emit("RESULT\t?\tfail\t-\tbad case line %q", scanner.Text())
			continue
		}
		version, body, err := attempt(fields)
		if err != nil {
			emit("RESULT\t%s\tfail\t%s\t%v", fields[0], version, err)
		} else {
			emit("RESULT\t%s\tok\t%s\t%s", fields[0], version, body)
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: interop server NAME|DIR|TLS... | interop client")
	}
	switch os.Args[1] {
	case "server":
		for _, spec := range os.Args[2:] {
			go serve(spec)
		}
		select {}
	case "client":
		clientLoop()
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
}
