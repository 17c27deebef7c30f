# xdoh — the two commands that matter: `make run` and `make test`.
GO      ?= go
BIN     := bin/xdoh
PKGS    := ./...
SHARED  ?= ../shared
# `xdoh version`: the release from git (the commit and Go version come from
# the build info, so -buildvcs=auto overrides a GOFLAGS=-buildvcs=false).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
GOBUILD := $(GO) build -buildvcs=auto -ldflags '-X main.version=$(VERSION)'

.PHONY: run test build bench bench-latency peer-bench doh-bench dot-bench xdp-bench faults anycast soak vet fuzz generate clean deb rpm

build:
	$(GOBUILD) -o $(BIN) ./cmd/xdoh

# The seed's topology on one machine: xdoh on 127.0.0.1:5300 (UDP+TCP) with the
# local zone aws.example.internal, forwarding example.com over DoH to an
# in-process on-prem resolver with a CA generated at start. Ctrl-C stops it.
run: build
	./$(BIN) run --demo

# Every test: unit, fuzz seeds, integration against real BIND 9.18 / kdig / dig.
test:
	$(GO) vet $(PKGS)
	# Allocation tests without -race first (-race makes sync.Pool drop items).
	$(GO) test -count=1 -run 'Alloc' ./datapath/udp ./datapath/xsk ./forwarder/... ./internal/...
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# Component benchmarks (allocations reported).
bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# Latency distributions of dnsperf and xdoh bench side by side (UDP, TCP,
# DoH POST) against one xdoh on loopback at RATE q/s. RATE, DURATION,
# CLIENTS, TRANSPORTS, XDOH_BIN.
bench-latency: build
	bash bench/latency.sh

# Side-by-side with dnsdist (and BIND's own ceiling) using ../shared/bench.
peer-bench: build
	SHARED=$(SHARED) bash bench/peers.sh

# xdoh's inbound DoH listener against BIND 9.18 with dnsperf -m doh (GET/POST,
# lone/loaded, cached forwarded name, dnsdist chain). DURATION, ONLY, XDOH_BIN.
doh-bench: build
	SHARED=$(SHARED) bash bench/doh.sh

# Do53 in, DoT out: xdoh against dnsdist 1.7 with BIND 9.18 (listen-on tls)
# upstream, and xdoh over DoQ to a second xdoh. DURATION, ONLY, XDOH_BIN.
dot-bench: build
	SHARED=$(SHARED) bash bench/dot.sh

# xdoh over XDP/AF_XDP against its socket path and Knot DNS 3.2 (sockets and
# XDP mode) with ../shared/bench-xdp (root; network namespaces it makes).
xdp-bench: build
	SHARED=$(SHARED) bash bench/xdp.sh

# Every upstream fault (DoH and Do53) under load against the xdoh binary,
# alone and paired with BIND 9.18: sent/answered/SERVFAIL/lost per fault, and
# goroutines/fds/RSS back to baseline. SECONDS_PER_CASE, QPS, ONLY.
faults:
	bash bench/faults.sh

# Two xdoh instances behind ECMP and anycast (BIRD 2, deploy/bird/) in
# network namespaces (root): one killed under load, started again, the other
# drained; the queries each answered per phase, and the loss window. RUNS.
anycast:
	bash bench/anycast.sh

# A bounded soak (DURATION seconds, default 600) at ~80% of the measured max
# QPS over a mix of cache hits, forwarded misses, local answers and NXDOMAIN,
# with a SIGHUP reload every minute; RSS growth after warm-up must stay < 10%.
soak: build
	SHARED=$(SHARED) bash bench/soak.sh

# Every fuzz target in turn, FUZZTIME each (new crashers land in testdata/fuzz).
# A run that fails only with Go 1.26's coordinator deadline race and writes
# no crasher (golang/go#75804) is reported and not counted.
FUZZTIME ?= 30s
fuzz:
	@for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$dir/*_test.go); do \
			echo "== $$dir $$f"; \
			seeds=$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l); \
			out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$dir 2>&1); rc=$$?; \
			echo "$$out"; \
			if [ $$rc -ne 0 ]; then \
				if [ "$$(ls $$dir/testdata/fuzz/$$f 2>/dev/null | wc -l)" = "$$seeds" ] && \
					echo "$$out" | grep -qx '    context deadline exceeded'; then \
					echo "== $$f: Go 1.26's fuzz coordinator failed on its own -fuzztime deadline with no crasher written (golang/go#75804, fixed in Go 1.27): not counted"; \
				else exit 1; fi; \
			fi; \
		done; \
	done

vet:
	$(GO) vet $(PKGS)

# Regenerate the committed bpf2go output (bpf/xdp_bpfel.go, .o) from
# bpf/xdp.c; needs clang, llvm-strip and libbpf-dev.
generate:
	$(GO) generate ./bpf/...

# Packages (deploy/nfpm.yaml) under bin/pkg: a static binary in /usr/bin,
# the systemd unit, /etc/xdoh/xdoh.yaml and the xdoh system user. The
# package version is the tag without its v (1.2.3+4.gabc1234 past it), or
# 0.0.0+git<commit> before the first tag.
NFPM        := $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
PKG_VERSION ?= $(shell case "$(VERSION)" in (v[0-9]*) echo "$(VERSION)" | sed 's/^v//; s/-/+/; s/-/./g';; (*) echo "0.0.0+git$(VERSION)" | sed 's/-/./g';; esac)

bin/pkg/xdoh: FORCE
	CGO_ENABLED=0 $(GOBUILD) -trimpath -o $@ ./cmd/xdoh

deb rpm: bin/pkg/xdoh
	rm -f bin/pkg/*.$@
	XDOH_PKG_VERSION='$(PKG_VERSION)' XDOH_PKG_ARCH=$$($(GO) env GOARCH) $(NFPM) pkg -f deploy/nfpm.yaml -p $@ -t bin/pkg/

clean:
	rm -rf bin

.PHONY: FORCE
FORCE:
