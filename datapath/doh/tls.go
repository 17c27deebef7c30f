package doh

import "fmt"

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
