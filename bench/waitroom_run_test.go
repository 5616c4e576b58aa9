package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestRunThroughAWaitingRoom: `podium bench run` against an edge whose
// room guards the buy path is a crowd of fans, not a flood of errors:
// each client keeps the room's token and sends it back, the room's 429s
// are counted as fans told to wait, and the clients the room lets in buy
// (2xx from the upstream). A client that dropped its token would never be
// let in.
func TestRunThroughAWaitingRoom(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs an edge")
	}
	dir := t.TempDir()
	podium := filepath.Join(dir, "podium")
	if out, err := exec.Command("go", "build", "-o", podium, "../cmd/podium").CombinedOutput(); err != nil {
		t.Fatalf("building podium: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts := WaitroomOptions{Podium: podium, Exe: []string{self, "bench"}, Env: []string{childEnv + "=1"}, ResultsDir: dir,
		AdmitPerSecond: 50, Refresh: time.Second}
	if err := opts.defaults(); err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(dir, "waitroom")
	for _, sub := range []string{"logs", "configs", "state"} {
		if err := os.MkdirAll(filepath.Join(scratch, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b := &roomBench{opts: opts, c: &comparison{dir: scratch, opts: CompareOptions{Exe: opts.Exe, Env: opts.Env, Podium: podium,
		HAProxy: "-", Nginx: "-", Taskset: opts.Taskset, LoadCPU: opts.LoadCPU, ProxyCPU: opts.ProxyCPU, Priority: opts.Priority, BodySize: 2048, Upstreams: 1}}}
	if b.up, err = b.c.startUpstreams(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.up.stop()
	if _, err := b.startEdge(ctx, scratch); err != nil {
		t.Fatal(err)
	}
	defer b.edge.stop()

	sc := &Scenario{Name: "room", Mode: ModeClosed, Duration: 8 * time.Second, Timeout: 5 * time.Second,
		Games: GameRange{First: 1, Last: 3},
		Streams: []Stream{{Name: "fans", Connections: 8, Clients: 40, Think: 50 * time.Millisecond,
			Mix: []MixEntry{{Op: OpBuy, Weight: 1, Quantity: 1}}}}}
	res, err := Run(ctx, sc, RunOptions{Target: "http://" + b.listen})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("statuses %v, queued %d, errors %v", res.Statuses, res.Queued, res.Errors)
	if res.ErrorCount != 0 {
		t.Errorf("errors %v: a waiting room's 429 is a fan told to wait", res.Errors)
	}
	if res.Queued == 0 || res.Statuses["429"] != res.Queued {
		t.Errorf("queued %d, 429s %d: want every 429 (the room's) counted as queued, and some", res.Queued, res.Statuses["429"])
	}
	if res.Statuses["200"] == 0 {
		t.Errorf("no purchase reached the upstream in %s: the clients never got in (statuses %v)", sc.Duration, res.Statuses)
	}
}
