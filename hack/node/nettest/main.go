// nettest checks a single-node test cluster from inside pods: an HTTP server
// and client for Service-by-DNS checks, a DNS lookup, and a call to the
// apiserver through the `kubernetes` Service with the pod's service-account
// token. Standard library only; hack/image.sh nettest packages it as
// docker.io/library/tlsid-nettest:dev (static, no libc).
//
//	nettest serve [ADDR]          HTTP server (default :8080); / answers "ok <hostname>"
//	nettest get URL [TIMEOUT]     GET URL until it answers 200 (default 60s); prints the body
//	nettest lookup NAME [TIMEOUT] resolve NAME until it resolves (default 60s); prints the addresses
//	nettest kube [TIMEOUT]        GET /version from the apiserver by the kubernetes Service IP
//	                              and by kubernetes.default.svc.cluster.local, verifying TLS
//	                              with the service-account CA and sending the token
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(arg(2, ":8080"))
	case "get":
		err = retry(timeout(3), func() error { return get(http.DefaultClient, need(2), "") })
	case "lookup":
		err = retry(timeout(3), func() error { return lookup(need(2)) })
	case "kube":
		err = retry(timeout(2), kube)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettest:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: nettest serve [ADDR] | get URL [TIMEOUT] | lookup NAME [TIMEOUT] | kube [TIMEOUT]")
	os.Exit(2)
}

func arg(i int, def string) string {
	if len(os.Args) > i {
		return os.Args[i]
	}
	return def
}

func need(i int) string {
	if len(os.Args) <= i {
		usage()
	}
	return os.Args[i]
}

func timeout(i int) time.Duration {
	d, err := time.ParseDuration(arg(i, "60s"))
	if err != nil {
		usage()
	}
	return d
}

// retry runs f until it succeeds or d passes: Services, endpoints and DNS
// records appear a little after the pods that use them.
func retry(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		fmt.Fprintln(os.Stderr, "nettest: retrying:", err)
		time.Sleep(time.Second)
	}
}

func serve(addr string) error {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})
	fmt.Fprintln(os.Stderr, "nettest: serving on", addr)
	return http.ListenAndServe(addr, nil)
}

func get(c *http.Client, url, token string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Printf("GET %s: %s", url, body)
	if !strings.HasSuffix(string(body), "\n") {
		fmt.Println()
	}
	return nil
}

func lookup(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", name, strings.Join(addrs, " "))
	return nil
}

func kube() error {
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return err
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s/ca.crt", saDir)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	for _, base := range []string{
		"https://" + net.JoinHostPort(host, port),
		"https://kubernetes.default.svc.cluster.local",
	} {
		if err := get(c, base+"/version", string(token)); err != nil {
			return err
		}
	}
	// An authenticated call: the token must be accepted, not just TLS.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost,
		"https://kubernetes.default.svc.cluster.local/apis/authentication.k8s.io/v1/selfsubjectreviews",
		strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
	req.Header.Set("Authorization", "Bearer "+string(token))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var review struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("SelfSubjectReview: %s: %s", resp.Status, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		return err
	}
	fmt.Printf("authenticated as %s\n", review.Status.UserInfo.Username)
	return nil
}
