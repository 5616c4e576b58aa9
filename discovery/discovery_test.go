package discovery_test

import (
	"context"
	"errors"
	"testing"

	"github.com/podium-edge/podium/discovery"
)

// Static keeps the Source contract: one push of the whole set at start, a
// slice the consumer owns, nothing more until ctx is done, then ctx.Err().
func TestStaticRunsTheSourceContract(t *testing.T) {
	want := []discovery.Target{{ID: "a:1", Addr: "a:1", Weight: 1}, {ID: "b:2", Addr: "b:2", Weight: 3}}
	var src discovery.Source = discovery.Static(want)

	pushes := make(chan []discovery.Target, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ts []discovery.Target) { pushes <- ts }) }()

	got := <-pushes
	if len(got) != len(want) {
		t.Fatalf("pushed %v, want %v", got, want)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Addr != want[i].Addr || got[i].Weight != want[i].Weight {
			t.Errorf("target %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// The pushed slice is the consumer's: writing into it leaves the
	// source's list alone.
	got[0].Addr = "changed:9"
	if want[0].Addr != "a:1" {
		t.Errorf("a write into the pushed snapshot reached the source: %+v", want[0])
	}

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v after its context was cancelled, want context.Canceled", err)
	}
	if len(pushes) != 0 {
		t.Errorf("%d pushes after the first, want none", len(pushes))
	}
}
