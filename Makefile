GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)

.PHONY: all build demo test test/race test/short test/chaos test/model lint fuzz bench clean

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

# The randomized differential test (cmd/matcol/model_test.go, docs/guarantees.md) for longer,
# or one run again: a failing run prints the command that repeats it.
#   make test/model DURATION=10m COUNT=3
#   make test/model SEED=123 DURATION=30s MODE=logical FEATURES=all,-restart
test/model:
	MATCOL_MODEL_SEED=$(SEED) MATCOL_MODEL_DURATION=$(or $(DURATION),2m) MATCOL_MODEL_MODE=$(MODE) \
	  MATCOL_MODEL_FEATURES=$(FEATURES) MATCOL_MODEL_WRITERS=$(WRITERS) \
	  $(GO) test -run '^TestModel' -count=$(or $(COUNT),1) -timeout 24h -v ./cmd/matcol

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
