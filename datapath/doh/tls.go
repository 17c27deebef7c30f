package doh

import (
	"fmt"

	"xdoh/datapath/tlsconf"
)

// ErrFIPSModeOff is returned by New for a FIPS listener in a process that
// does not run in Go's FIPS 140-3 mode: tlsconf's sentinel, so errors.Is
// matches it whichever listener failed.
var ErrFIPSModeOff = tlsconf.ErrFIPSModeOff

// FIPSStatus describes the process's FIPS 140-3 mode (tlsconf.FIPSStatus).
func FIPSStatus() string { return tlsconf.FIPSStatus() }

// PKI is tlsconf.PKI, kept here for the callers that make their test CA
// through this package.
type PKI = tlsconf.PKI

// NewPKI is tlsconf.NewPKI.
func NewPKI(hosts ...string) (*PKI, error) { return tlsconf.NewPKI(hosts...) }

// ReloadCertificate reads CertFile and KeyFile again and serves the new
// certificate on handshakes from now on; established connections keep
// theirs. When the files do not hold a usable key pair it returns an error
// naming the file and the old certificate stays. It fails for a server
// configured with Config.TLS.
func (s *Server) ReloadCertificate() error {
	if err := s.certs.Reload(); err != nil {
		return fmt.Errorf("doh listener %q: reloading certificate: %w", s.cfg.Name, err)
	}
	return nil
}
