package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"golang.org/x/net/http2"

	"xdoh/forwarder/upstream"
)

// dohGet sends DoH GET requests (RFC 8484 4.1, ?dns=base64url) over
// net/http with golang.org/x/net/http2: xdoh's own DoH client only POSTs,
// as a forwarder should. Each query has a goroutine, which is a load
// generator's concession, not the forwarder's way.
type dohGet struct {
	target string
	base   *url.URL
	client *http.Client
	tr     *http2.Transport
}

var _ upstream.Upstream = (*dohGet)(nil)

func newDoHGet(cfg *Config) (*dohGet, error) {
	u, err := url.Parse(cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", cfg.Target, err)
	}
	if u.Path == "" {
		u.Path = "/dns-query"
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName, NextProtos: []string{"h2"}}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
		conf.RootCAs = pool
	}
	tr := &http2.Transport{TLSClientConfig: conf, StrictMaxConcurrentStreams: false}
	return &dohGet{target: cfg.Target, base: u, tr: tr, client: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

func (d *dohGet) String() string { return d.target }

func (d *dohGet) Close() error {
	d.tr.CloseIdleConnections()
	return nil
}

type cancelFunc func()

func (c cancelFunc) Cancel() { c() }

// Submit sends the query with ID 0 (RFC 8484 4.1: cache friendly) and puts
// the caller's ID back in the answer.
func (d *dohGet) Submit(query []byte, timeout time.Duration, done func([]byte, error)) upstream.Canceler {
	if len(query) < 12 {
		done(nil, upstream.ErrBadQuery)
		return nil
	}
	id0, id1 := query[0], query[1]
	q := append([]byte(nil), query...)
	q[0], q[1] = 0, 0
	u := *d.base
	v := u.Query()
	v.Set("dns", base64.RawURLEncoding.EncodeToString(q))
	u.RawQuery = v.Encode()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		defer cancel()
		resp, err := d.get(ctx, u.String())
		if err == nil {
			resp[0], resp[1] = id0, id1
		}
		done(resp, err)
	}()
	return cancelFunc(cancel)
}

func (d *dohGet) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/dns-message")
	resp, err := d.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: %w", upstream.ErrTimeout, err)
		}
		return nil, fmt.Errorf("GET %s: %w", d.target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 65536))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: %w", upstream.ErrTimeout, err)
		}
		return nil, fmt.Errorf("GET %s: reading body: %w", d.target, err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/dns-message" || len(body) < 12 || body[0] != 0 || body[1] != 0 {
		return nil, fmt.Errorf("%w: GET %s: status %d, content type %q, %d octets", upstream.ErrBadResponse, d.target, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
	}
	return body, nil
}
