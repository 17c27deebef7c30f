// Package tlsconf is the server side of TLS that xdoh's encrypted
// listeners share (DoH, DoT, DoQ): the certificate, loaded from files and
// reloaded on SIGHUP, or given as a tls.Config; and the FIPS gate with the
// narrower parameters of a FIPS listener (doh-fips, dot-fips). One copy, so
// that a FIPS listener means the same thing whatever it speaks.
//
// It also has PKI, the private CA that `xdoh run --demo` and the tests use.
package tlsconf

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
)

// ErrFIPSModeOff is returned by New for a FIPS listener in a process that
// does not run in Go's FIPS 140-3 mode.
var ErrFIPSModeOff = errors.New("doh-fips and dot-fips need Go's FIPS 140-3 mode: run with GODEBUG=fips140=on (or only)")

// The TLS parameters of a FIPS listener (doh-fips, dot-fips). In FIPS 140-3 mode crypto/tls
// already refuses anything outside its own FIPS policy
// (crypto/tls/defaults_fips140.go); these lists narrow that policy further
// and are applied even to a Config.TLS that sets its own.
//
//   - Versions: TLS 1.2 and 1.3 only.
//   - TLS 1.2 suites: ECDHE with AES-GCM (SP 800-52r2). Go's FIPS policy
//     also allows two AES-CBC-SHA256 suites; they are left out, as they are
//     of the Lucky13 family and no client needs them.
//   - TLS 1.3 suites are not configurable in crypto/tls; in FIPS mode Go
//     offers only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384.
//   - Key exchange: NIST P-256 and P-384, and the hybrid ML-KEM groups (TLS
//     1.3 only). SecP256r1MLKEM768 and SecP384r1MLKEM1024 combine two
//     approved algorithms. X25519MLKEM768 is in Go's FIPS policy and its key
//     schedule as "a hybrid of ML-KEM, which is Approved" (SP 800-56C r2
//     hybrid key derivation with an approved ML-KEM-768 share, FIPS 203);
//     it is what current browsers and curl send a key share for, so keeping
//     it avoids a HelloRetryRequest round trip. Plain X25519 and P-521 are
//     not offered.
//   - Signatures and certificates: Go's FIPS policy (RSA ≥ 2048 bits, ECDSA
//     on P-256/384/521, Ed25519; no SHA-1). New and ReloadCertificate check
//     the certificate key up front.
//   - In FIPS mode Go also refuses TLS 1.2 clients without Extended Master
//     Secret (RFC 7627); GODEBUG=fips140ems=0 relaxes that, xdoh does not.
var (
	fipsCipherSuites = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	fipsCurves = []tls.CurveID{
		tls.SecP256r1MLKEM768,
		tls.X25519MLKEM768,
		tls.SecP384r1MLKEM1024,
		tls.CurveP256,
		tls.CurveP384,
	}
)

// FIPSStatus describes the process's FIPS 140-3 mode for the startup log and
// `xdoh check`, e.g. "FIPS 140-3 mode: on (GODEBUG=fips140=on, Go
// Cryptographic Module v1.0.0)" or "FIPS 140-3 mode: off".
func FIPSStatus() string {
	switch {
	case !fips140.Enabled():
		return "FIPS 140-3 mode: off"
	case fips140.Enforced():
		return "FIPS 140-3 mode: only (GODEBUG=fips140=only, Go Cryptographic Module " + fips140.Version() + ")"
	default:
		return "FIPS 140-3 mode: on (GODEBUG=fips140=on, Go Cryptographic Module " + fips140.Version() + ")"
	}
}

// Config is where a listener's certificate comes from.
type Config struct {
	// TLS is the server's TLS configuration; alternatively CertFile and
	// KeyFile name a PEM certificate chain and key, which Server.Reload
	// reads again. Exactly one of the two must be given. TLS 1.2 is the
	// minimum version either way.
	TLS               *tls.Config
	CertFile, KeyFile string
	// FIPS limits TLS to the FIPS-approved parameters above and requires
	// an approved certificate key; New fails outside Go's FIPS 140-3 mode.
	FIPS bool
}

// Server is a listener's TLS configuration with its certificate.
type Server struct {
	cfg  Config
	conf *tls.Config
	cert atomic.Pointer[tls.Certificate] // served when loaded from CertFile/KeyFile
}

// New checks cfg, loads the certificate and builds the TLS configuration.
// nextProtos are the ALPN protocols offered ("h2", "dot", "doq"). Errors
// name the offending field.
func New(cfg Config, nextProtos ...string) (*Server, error) {
	if cfg.FIPS && !fips140.Enabled() {
		return nil, fmt.Errorf("FIPS: %w", ErrFIPSModeOff)
	}
	s := &Server{cfg: cfg}
	conf, err := s.build()
	if err != nil {
		return nil, err
	}
	conf.NextProtos = nextProtos
	s.conf = conf
	return s, nil
}

// TLSConfig is the configuration to serve with; callers must not modify
// it (Clone it first).
func (s *Server) TLSConfig() *tls.Config { return s.conf }

// build makes the TLS configuration from Config.TLS or the files, whose
// certificate it stores in s.cert.
func (s *Server) build() (*tls.Config, error) {
	c := &s.cfg
	files := c.CertFile != "" || c.KeyFile != ""
	switch {
	case c.TLS != nil && files:
		return nil, errors.New("TLS and CertFile/KeyFile: only one may be set")
	case c.TLS == nil && !files:
		return nil, errors.New("TLS or CertFile/KeyFile: no certificate configured")
	case files && c.CertFile == "":
		return nil, errors.New("CertFile: empty while KeyFile is set")
	case files && c.KeyFile == "":
		return nil, errors.New("KeyFile: empty while CertFile is set")
	}
	var conf *tls.Config
	if c.TLS != nil {
		conf = c.TLS.Clone()
		if len(conf.Certificates) == 0 && conf.GetCertificate == nil && conf.GetConfigForClient == nil {
			return nil, errors.New("TLS: no certificate (Certificates, GetCertificate or GetConfigForClient)")
		}
		if c.FIPS {
			if conf.GetConfigForClient != nil {
				return nil, errors.New("TLS.GetConfigForClient: not supported with FIPS, the FIPS parameters could not be applied")
			}
			for i := range conf.Certificates {
				if err := checkFIPSCertificate(&conf.Certificates[i]); err != nil {
					return nil, fmt.Errorf("TLS.Certificates[%d]: %w", i, err)
				}
			}
		}
	} else {
		cert, err := s.loadCertificate()
		if err != nil {
			return nil, err
		}
		s.cert.Store(cert)
		conf = &tls.Config{GetCertificate: s.getCertificate}
	}
	if conf.MinVersion < tls.VersionTLS12 {
		conf.MinVersion = tls.VersionTLS12
	}
	if c.FIPS {
		if err := restrictToFIPS(conf); err != nil {
			return nil, err
		}
	}
	return conf, nil
}

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

// ErrNoFiles is returned by Reload for a Server configured with
// Config.TLS: there is nothing to read again.
var ErrNoFiles = errors.New("no CertFile/KeyFile configured (the certificate comes from Config.TLS)")

// Reload reads CertFile and KeyFile again and serves the new certificate
// on handshakes from now on; established connections keep theirs. When the
// files do not hold a usable key pair it returns an error naming the file
// and the old certificate stays.
func (s *Server) Reload() error {
	if s.cfg.CertFile == "" {
		return ErrNoFiles
	}
	cert, err := s.loadCertificate()
	if err != nil {
		return err
	}
	s.cert.Store(cert)
	return nil
}

// loadCertificate reads and checks the key pair in CertFile and KeyFile.
func (s *Server) loadCertificate() (*tls.Certificate, error) {
	certFile, keyFile := s.cfg.CertFile, s.cfg.KeyFile
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("CertFile: %w", err) // the error names the path
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("KeyFile: %w", err)
	}
	// Parse the chain on its own first so that the error blames the right file.
	if err := checkCertificatePEM(certPEM); err != nil {
		return nil, fmt.Errorf("CertFile %s: %w", certFile, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("KeyFile %s (for CertFile %s): %w", keyFile, certFile, err)
	}
	if s.cfg.FIPS {
		if err := checkFIPSCertificate(&cert); err != nil {
			return nil, fmt.Errorf("CertFile %s: %w", certFile, err)
		}
	}
	return &cert, nil
}

// checkCertificatePEM reports whether data holds at least one certificate
// and every certificate in it parses.
func checkCertificatePEM(data []byte) error {
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM CERTIFICATE block")
	}
	return nil
}

// checkFIPSCertificate mirrors crypto/tls's FIPS policy for certificate
// keys, so that a certificate no FIPS handshake can use is refused when it is
// loaded rather than at every handshake.
func checkFIPSCertificate(cert *tls.Certificate) error {
	leaf := cert.Leaf
	if leaf == nil {
		if len(cert.Certificate) == 0 {
			return errors.New("empty certificate chain")
		}
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parsing certificate: %w", err)
		}
	}
	switch k := leaf.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is not FIPS-approved (2048 or more)", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() && k.Curve != elliptic.P521() {
			return fmt.Errorf("ECDSA key on %s is not FIPS-approved (P-256, P-384 or P-521)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%T key is not FIPS-approved", k)
	}
	return nil
}

// restrictToFIPS limits conf to fipsCipherSuites and fipsCurves (or the
// approved part of what conf already names) and TLS 1.2–1.3.
func restrictToFIPS(conf *tls.Config) error {
	if conf.MaxVersion == 0 || conf.MaxVersion > tls.VersionTLS13 {
		conf.MaxVersion = tls.VersionTLS13
	}
	if conf.MaxVersion < conf.MinVersion {
		return fmt.Errorf("TLS.MaxVersion: %s is below TLS 1.2", tls.VersionName(conf.MaxVersion))
	}
	if conf.CipherSuites == nil {
		conf.CipherSuites = slices.Clone(fipsCipherSuites)
	} else {
		conf.CipherSuites = slices.DeleteFunc(slices.Clone(conf.CipherSuites), func(id uint16) bool {
			return !slices.Contains(fipsCipherSuites, id)
		})
		if len(conf.CipherSuites) == 0 && conf.MinVersion < tls.VersionTLS13 {
			return errors.New("TLS.CipherSuites: none is FIPS-approved")
		}
	}
	if conf.CurvePreferences == nil {
		conf.CurvePreferences = slices.Clone(fipsCurves)
	} else {
		conf.CurvePreferences = slices.DeleteFunc(slices.Clone(conf.CurvePreferences), func(id tls.CurveID) bool {
			return !slices.Contains(fipsCurves, id)
		})
		if len(conf.CurvePreferences) == 0 {
			return errors.New("TLS.CurvePreferences: none is FIPS-approved")
		}
	}
	return nil
}
