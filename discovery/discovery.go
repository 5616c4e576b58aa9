// Package discovery says where the edge's upstream set comes from. A Source
// pushes whole snapshots of the set, never diffs, so a consumer can swap its
// state atomically (fabio's registry does the same). Discovery knows nothing
// of the balancer or the proxy: cmd/podium connects a Source to the pool.
package discovery

import (
	"context"
	"slices"
)

// Target is one upstream instance as a source reports it. The zero Weight
// means the default weight of 1.
//
// A Target is a plain value and may be copied.
type Target struct {
	// ID identifies the instance across snapshots (a Consul service ID, or
	// the address for static lists). Health and ejection state follow it.
	ID string
	// Addr is host:port to dial.
	Addr string
	// Weight scales the instance's share under least connections.
	Weight int
	// Meta carries source-specific labels (Consul service meta, tags).
	Meta map[string]string
}

// Source produces snapshots of the upstream set.
//
// Run calls push with the complete current set each time it changes, and
// once at start when the set is known. It returns when ctx is done (with
// ctx.Err()) or on an error it cannot recover from. A source that loses
// contact with its backend keeps the last known set by simply not pushing.
// push is never called concurrently by one Run.
type Source interface {
	Run(ctx context.Context, push func([]Target)) error
}

// Static is a fixed upstream list: discovery.static of the edge's config,
// the embedded default among them.
//
// A Static may be copied; it is safe for concurrent use.
type Static []Target

var _ Source = Static(nil)

// Run pushes the list once and waits for ctx.
func (s Static) Run(ctx context.Context, push func([]Target)) error {
	push(slices.Clone(s))
	<-ctx.Done()
	return ctx.Err()
}
