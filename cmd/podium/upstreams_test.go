package main

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery"
	"github.com/podium-edge/podium/discovery/consul"
)

// gatedSource pushes its set only once release is closed, then closes
// pushed: a source whose first push comes late, as a Consul watcher's does.
type gatedSource struct {
	set     []discovery.Target
	release chan struct{}
	pushed  chan struct{}
}

var _ discovery.Source = gatedSource{}

func (g gatedSource) Run(ctx context.Context, push func([]discovery.Target)) error {
	<-g.release
	push(g.set)
	close(g.pushed)
	<-ctx.Done()
	return ctx.Err()
}

// A reload that replaces the source must win even when the replaced
// source pushes afterwards: the pool then holds the new set, not the old.
func TestFeedDropsPushesOfAReplacedSource(t *testing.T) {
	got := make(chan []discovery.Target, 4)
	f := feed{push: func(ts []discovery.Target) { got <- ts }, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	old := gatedSource{set: []discovery.Target{{ID: "old:1", Addr: "old:1"}}, release: make(chan struct{}), pushed: make(chan struct{})}
	f.start(ctx, old)
	f.start(ctx, discovery.Static{{ID: "new:1", Addr: "new:1", Weight: 1}})
	if ts := <-got; len(ts) != 1 || ts[0].ID != "new:1" {
		t.Fatalf("first push %v, want the new source's [new:1]", ts)
	}
	close(old.release)
	<-old.pushed
	select {
	case ts := <-got:
		t.Errorf("the replaced source's push %v reached the pool after its replacement's", ts)
	default:
	}
}

// The edge's config becomes a source through the one contract: a static
// list pushes its upstreams with their weights, discovery.consul gives a
// Consul watcher.
func TestNewSourceFromConfig(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, err := config.Load("static.yaml", []byte("discovery:\n  static: [\"127.0.0.1:9101\", {addr: \"127.0.0.1:9102\", weight: 3}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := newSource(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pushes := make(chan []discovery.Target, 1)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ts []discovery.Target) { pushes <- ts }) }()
	got := <-pushes
	cancel()
	<-done
	want := []discovery.Target{{ID: "127.0.0.1:9101", Addr: "127.0.0.1:9101", Weight: 1}, {ID: "127.0.0.1:9102", Addr: "127.0.0.1:9102", Weight: 3}}
	if len(got) != len(want) {
		t.Fatalf("static source pushed %v, want %v", got, want)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Addr != want[i].Addr || got[i].Weight != want[i].Weight {
			t.Errorf("target %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	cfg, err = config.Load("consul.yaml", []byte("discovery:\n  consul: {address: \"127.0.0.1:8500\", service: podium-origin}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if src, err = newSource(cfg, log); err != nil {
		t.Fatal(err)
	}
	if _, ok := src.(*consul.Watcher); !ok {
		t.Errorf("discovery.consul gave a %T, want a *consul.Watcher", src)
	}
}
