GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)

.PHONY: all build demo test test/race test/short test/chaos lint fuzz bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/matcol ./cmd/matcol

# The whole thing on a throwaway local PostgreSQL, until Ctrl-C.
demo: build
	./bin/matcol demo

# Vet, then every test under the race detector against a real PostgreSQL started by the tests.
test: lint test/race

test/race:
	$(GO) test -race -timeout 12m $(PKGS)

# The chaos test for longer: MATCOL_CHAOS_SECONDS=300 make test/chaos
test/chaos:
	MATCOL_CHAOS_SECONDS=$${MATCOL_CHAOS_SECONDS:-120} $(GO) test -run Chaos -count=1 -timeout 30m -v ./cmd/matcol

test/short:
	$(GO) test -short -timeout 5m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 30s ./config
	$(GO) test -run '^$$' -fuzz FuzzParseName -fuzztime 30s ./internal/pgident

bench:
	$(GO) run ./bench

clean:
	rm -rf bin
