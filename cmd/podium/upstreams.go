package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery"
	"github.com/podium-edge/podium/discovery/consul"
)

// newSource returns the upstream source cfg names: the Consul catalog when
// discovery.consul is set, else the static list.
func newSource(cfg *config.Edge, log *slog.Logger) (discovery.Source, error) {
	if cs := cfg.Discovery.Consul; cs != nil {
		w, err := consul.NewWatcher(consulConfig(cs), log)
		if err != nil {
			return nil, err
		}
		return w, nil
	}
	return staticSource(cfg), nil
}

// staticSource is discovery.static as a source; a reload that changes the
// list starts a new one in its place.
func staticSource(cfg *config.Edge) discovery.Static {
	s := make(discovery.Static, 0, len(cfg.Discovery.Static))
	for _, u := range cfg.Discovery.Static {
		s = append(s, discovery.Target{ID: u.Addr, Addr: u.Addr, Weight: u.Weight})
	}
	return s
}

func discoveryName(cfg *config.Edge) string {
	if cs := cfg.Discovery.Consul; cs != nil {
		return "consul service " + cs.Service
	}
	return fmt.Sprintf("static, %d upstreams", len(cfg.Discovery.Static))
}

func targetsToConfigs(ts []discovery.Target) []balancer.Config {
	out := make([]balancer.Config, len(ts))
	for i, t := range ts {
		out[i] = balancer.Config{ID: t.ID, Addr: t.Addr, Weight: t.Weight}
	}
	return out
}

// feed runs one discovery.Source at a time and hands its snapshots to push.
// A reload that changes the static list replaces the source; the replaced
// one may still be about to push (its goroutine not yet scheduled, or a
// push under way), and its snapshot must not land after the new source's.
// So a source's pushes pass only while it is the current one, checked
// under the same lock that replaces it.
//
// A feed is safe for concurrent use; it must not be copied.
type feed struct {
	push func([]discovery.Target)
	log  *slog.Logger

	mu   sync.Mutex // guards gen and stop, and serialises pushes
	gen  uint64     // bumped by every start: a source's pushes count while gen is its own
	stop context.CancelFunc
}

// start stops the running source, if any, and runs src until ctx is done
// or the next start.
func (f *feed) start(ctx context.Context, src discovery.Source) {
	ctx, cancel := context.WithCancel(ctx)
	f.mu.Lock()
	if f.stop != nil {
		f.stop()
	}
	f.gen++
	gen := f.gen
	f.stop = cancel
	f.mu.Unlock()
	go func() {
		err := src.Run(ctx, func(ts []discovery.Target) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.gen != gen {
				return
			}
			f.push(ts)
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			// A source that stops pushes nothing more: the pool keeps the
			// last known set, and the prober still judges its hosts.
			f.log.Error("upstream discovery stopped; keeping the last known upstreams", "error", err)
		}
	}()
}
