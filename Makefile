# Podium. `make demo` runs the stack on loopback; `make test` runs every
# check CI runs. Both install what they need (Debian packages, the Consul
# agent build) on first use.

GO            ?= go
BIN           := bin/podium
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOTESTFLAGS   ?=
# Packages on the request path also run under the race detector.
RACE_PKGS     := ./config/... ./balancer/... ./healthcheck/... ./proxy/... ./discovery/...

.PHONY: all build test test-go test-race lint deps consul demo demo-clean bench hooks clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/podium

deps:
	scripts/deps.sh

# The Consul agent is built once (about 6 minutes cold) into .cache/bin.
consul:
	scripts/consul.sh build

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

test: deps consul lint test-race test-go

test-race:
	$(GO) test -race -count=1 $(GOTESTFLAGS) $(RACE_PKGS)

test-go:
	$(GO) test -count=1 -timeout 20m $(GOTESTFLAGS) ./...

demo: deps build
	scripts/demo.sh

demo-clean:
	scripts/demo.sh clean

bench: deps build
	$(BIN) bench compare

hooks:
	git config core.hooksPath .githooks
	@echo "pre-commit hook enabled: gofmt and go vet on staged Go files"

clean:
	rm -rf bin
