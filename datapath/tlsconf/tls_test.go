package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustPKI(t testing.TB) *PKI {
	t.Helper()
	pki, err := NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return pki
}

func TestRestrictToFIPS(t *testing.T) {
	tests := []struct {
		name       string
		conf       *tls.Config
		wantSuites []uint16
		wantCurves []tls.CurveID
		wantErr    string
	}{
		{name: "defaults", conf: &tls.Config{}, wantSuites: fipsCipherSuites, wantCurves: fipsCurves},
		{
			name: "configured lists are filtered",
			conf: &tls.Config{
				CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256},
				CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP384, tls.CurveP521},
			},
			wantSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384},
			wantCurves: []tls.CurveID{tls.CurveP384},
		},
		{name: "no approved suite", conf: &tls.Config{CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305}}, wantErr: "TLS.CipherSuites"},
		{name: "no approved curve", conf: &tls.Config{CurvePreferences: []tls.CurveID{tls.X25519}}, wantErr: "TLS.CurvePreferences"},
		{name: "TLS 1.1 at most", conf: &tls.Config{MaxVersion: tls.VersionTLS11}, wantErr: "TLS.MaxVersion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := tt.conf.Clone()
			conf.MinVersion = tls.VersionTLS12 // as tlsConfig sets it first
			err := restrictToFIPS(conf)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("restrictToFIPS = %v, want an error naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if conf.MinVersion != tls.VersionTLS12 || conf.MaxVersion != tls.VersionTLS13 {
				t.Errorf("versions %s..%s, want TLS 1.2..TLS 1.3", tls.VersionName(conf.MinVersion), tls.VersionName(conf.MaxVersion))
			}
			if !slices.Equal(conf.CipherSuites, tt.wantSuites) {
				t.Errorf("CipherSuites = %v, want %v", conf.CipherSuites, tt.wantSuites)
			}
			if !slices.Equal(conf.CurvePreferences, tt.wantCurves) {
				t.Errorf("CurvePreferences = %v, want %v", conf.CurvePreferences, tt.wantCurves)
			}
		})
	}
	if len(tests[1].conf.CipherSuites) != 3 {
		t.Error("restrictToFIPS modified the caller's CipherSuites")
	}
}

func TestCheckFIPSCertificate(t *testing.T) {
	selfSigned := func(pub, priv any) *tls.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}} // Leaf left nil: parsed on demand
	}
	ecKey := func(c elliptic.Curve) *tls.Certificate {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return selfSigned(&k.PublicKey, k)
	}
	rsaKey := func(bits int) *tls.Certificate {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return selfSigned(&k.PublicKey, k)
	}
	tests := []struct {
		name    string
		cert    *tls.Certificate
		wantErr string
	}{
		{name: "ECDSA P-256", cert: &mustPKI(t).Cert},
		{name: "ECDSA P-384", cert: ecKey(elliptic.P384())},
		{name: "ECDSA P-224", cert: ecKey(elliptic.P224()), wantErr: "P-224"},
		{name: "RSA 2048", cert: rsaKey(2048)},
		{name: "RSA 1024", cert: rsaKey(1024), wantErr: "1024 bits"},
		{name: "empty chain", cert: &tls.Certificate{}, wantErr: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkFIPSCertificate(tt.cert)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkFIPSCertificate = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkFIPSCertificate = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}
