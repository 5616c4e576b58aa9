# Podium. `make demo` runs the stack on loopback; `make test` runs every
# check CI runs. Both install what they need (Debian packages, the Consul
# agent build) on first use.

GO            ?= go
BIN           := bin/podium
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOTESTFLAGS   ?=
# Packages on the request path also run under the race detector.
RACE_PKGS     := ./config/... ./balancer/... ./healthcheck/... ./proxy/... ./transport/... ./discovery/... ./ratelimit/...

.PHONY: all build test test-go test-race lint fuzz deps consul demo demo-clean bench bench-waitroom smoke stress hooks clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/podium

deps:
	scripts/deps.sh
	e2e/install-chromium.sh

# The Consul agent is built once (about 6 minutes cold) into .cache/bin.
consul:
	scripts/consul.sh build

# The edge builds everywhere Go does: the Linux-only socket code has a
# portable fallback (transport, go build -tags portable on Linux).
lint:
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...
	GOOS=windows $(GO) build ./...
	GOOS=darwin $(GO) vet ./transport/... ./balancer/... ./proxy/...
	GOOS=windows $(GO) vet ./transport/... ./balancer/... ./proxy/...
	$(GO) vet -tags portable ./transport/... ./proxy/...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

test: deps consul lint test-race test-go test-portable
	scripts/fuzz.sh $(CI_FUZZTIME)

# Every Fuzz target in the module for FUZZTIME each; make test runs them
# for CI_FUZZTIME. A crasher lands in the package's testdata/fuzz/: commit it.
FUZZTIME      ?= 20s
CI_FUZZTIME   ?= 8s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

test-race:
	$(GO) test -race -count=1 $(GOTESTFLAGS) $(RACE_PKGS)

test-go:
	$(GO) test -count=1 -timeout 20m $(GOTESTFLAGS) ./...

# The socket layer's portable fallback (what runs elsewhere than Linux)
# and the proxy on it, built here with the tag that forces it: the edge
# behaves the same on both.
.PHONY: test-portable
test-portable:
	$(GO) test -count=1 -tags portable $(GOTESTFLAGS) ./transport/ ./proxy/

demo: deps build
	scripts/demo.sh

demo-clean:
	scripts/demo.sh clean

# The comparison's origin scenario runs on a MariaDB cluster of its own
# (ports 3317-3319), apart from the demo's; so does scripts/bench-sale.sh,
# the purchase path against mariadb-slap (bench-results/sale.md).
BENCH_DB := PODIUM_DB_STATE_DIR=.state/bench-mariadb PODIUM_DB_PRIMARY_PORT=3317 PODIUM_DB_REPLICA1_PORT=3318 PODIUM_DB_REPLICA2_PORT=3319

bench: deps build
	$(BENCH_DB) scripts/mariadb-cluster.sh start
	eval "$$($(BENCH_DB) scripts/mariadb-cluster.sh env)" && $(BIN) bench compare && \
	  $(BENCH_DB) PODIUM_BIN=$(BIN) scripts/bench-sale.sh; \
	  status=$$?; $(BENCH_DB) scripts/mariadb-cluster.sh stop; exit $$status

# Issue 18's waiting-room figures: 20,000 visitors at a room admitting
# 500/s, and the edge's CPU per waiting page against a cached listing hit
# (bench-results/waitroom.md; scripts/bench-waitroom.sh -h).
bench-waitroom: build
	PODIUM_BIN=$(BIN) scripts/bench-waitroom.sh $(BENCH_WAITROOM_FLAGS)

# Checks a running stack (make demo's by default): /ping on edge and
# origins, one listing, one detail. No writes unless SMOKE_FLAGS="-write -game N".
SMOKE_EDGE    ?= http://127.0.0.1:8080
SMOKE_ORIGINS ?= http://127.0.0.1:9001,http://127.0.0.1:9002,http://127.0.0.1:9003
smoke: build
	$(BIN) smoke -edge $(SMOKE_EDGE) -origins $(SMOKE_ORIGINS) $(SMOKE_FLAGS)

# Issue 23's proof: every package's tests 50 times beside two CPU hogs,
# failures counted per test (scripts/stress.sh -h; STRESS_FLAGS="-n 10 -j 2").
stress: deps consul
	scripts/stress.sh $(STRESS_FLAGS)

hooks:
	git config core.hooksPath .githooks
	@echo "pre-commit hook enabled: gofmt and go vet on staged Go files"

clean:
	rm -rf bin
