package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"xdoh/cmd/xdoh/internal/config"
)

// controlServer answers `xdoh reload` on a unix socket: one line in
// ("reload"), one line out ("ok" or "error: why").
type controlServer struct {
	ln   net.Listener
	path string
}

func listenControl(path string, a *app) (*controlServer, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path) // a stale socket from a previous run
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control.socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control.socket: %w", err)
	}
	s := &controlServer{ln: ln, path: path}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c, a)
		}
	}()
	return s, nil
}

func (s *controlServer) serve(c net.Conn, a *app) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 256)).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	switch strings.TrimSpace(line) {
	case "reload":
		if err := a.reload(); err != nil {
			a.log.Error("reload rejected; the running config stays", "err", err, "via", "control socket")
			fmt.Fprintf(c, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
			return
		}
		fmt.Fprintln(c, "ok")
	default:
		fmt.Fprintf(c, "error: unknown command %q (want reload)\n", strings.TrimSpace(line))
	}
}

func (s *controlServer) Close() error {
	err := s.ln.Close()
	_ = os.Remove(s.path)
	return err
}

// cmdReload asks a running xdoh to reload its config: `xdoh reload -s SOCKET`
// or `xdoh reload -c FILE` (the socket named in the file's control section).
func cmdReload(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	sock := fs.String("s", "", "control socket")
	path := fs.String("c", "", "config file naming control.socket")
	if err := fs.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if *sock == "" && *path != "" {
		cfg, err := config.Read(*path)
		if err != nil {
			return usagef("%v", err)
		}
		*sock = cfg.Path(cfg.Control.Socket)
	}
	if *sock == "" {
		return usagef("-s SOCKET or -c FILE with control.socket is required")
	}
	c, err := net.DialTimeout("unix", *sock, 2*time.Second)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", *sock, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintln(c, "reload"); err != nil {
		return fmt.Errorf("sending reload: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return fmt.Errorf("reading the answer: %w", err)
	}
	line = strings.TrimSpace(line)
	if line != "ok" {
		return errors.New(strings.TrimPrefix(line, "error: "))
	}
	fmt.Fprintln(out, "reloaded")
	return nil
}
