package consul

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/podium-edge/podium/discovery"
)

func TestNextIndex(t *testing.T) {
	tests := []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first answer", 0, 42, 42},
		{"moved forward", 42, 57, 57},
		{"nothing changed (wait expired)", 42, 42, 42},
		{"went backwards: agent restarted", 57, 12, 0},
		{"went backwards to zero", 57, 0, 0},
		{"zero on first answer is a consul bug: block from 1", 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextIndex(tt.prev, tt.got); got != tt.want {
				t.Errorf("nextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	for n := 1; n <= 12; n++ {
		ceil := min(lo<<(n-1), hi)
		for range 200 {
			d := backoff(n, lo, hi)
			if d < ceil/2 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, ceil/2, ceil)
			}
		}
	}
	// Jitter: 200 draws at the cap are not all the same.
	seen := map[time.Duration]bool{}
	for range 200 {
		seen[backoff(10, lo, hi)] = true
	}
	if len(seen) < 2 {
		t.Errorf("backoff at the cap gave %d distinct values in 200 draws, want jitter", len(seen))
	}
}

func TestTargets(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	node := &api.Node{Node: "n1", Address: "10.0.0.9"}
	entries := []*api.ServiceEntry{
		{Node: node, Service: &api.AgentService{ID: "b", Address: "127.0.0.2", Port: 9002, Meta: map[string]string{"weight": "3", "version": "v2"}, Tags: []string{"blue", "canary"}}},
		{Node: node, Service: &api.AgentService{ID: "a", Port: 9001}}, // no service address: node's
		{Node: node, Service: &api.AgentService{ID: "c", Address: "::1", Port: 9003, Meta: map[string]string{"weight": "heavy"}}},
		{Node: node, Service: &api.AgentService{ID: "d", Address: "127.0.0.4", Port: 9004, Meta: map[string]string{"weight": "0"}}},
		{Node: node, Service: &api.AgentService{ID: "e", Address: "127.0.0.5"}}, // no port: skipped
	}
	got := targets(entries, log)
	want := []discovery.Target{
		{ID: "a", Addr: "10.0.0.9:9001", Weight: 1, Meta: map[string]string{MetaNode: "n1"}},
		{ID: "b", Addr: "127.0.0.2:9002", Weight: 3, Meta: map[string]string{"weight": "3", "version": "v2", MetaNode: "n1", MetaTags: "blue,canary"}},
		{ID: "c", Addr: "[::1]:9003", Weight: 1, Meta: map[string]string{"weight": "heavy", MetaNode: "n1"}},
		{ID: "d", Addr: "127.0.0.4:9004", Weight: 1, Meta: map[string]string{"weight": "0", MetaNode: "n1"}},
	}
	if !equalTargets(got, want) {
		t.Errorf("targets:\n got %+v\nwant %+v", got, want)
	}
	for _, s := range []string{`id=c weight=heavy`, `id=d weight=0`, `id=e`} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logs.String())
		}
	}
}

func TestUnion(t *testing.T) {
	a := discovery.Target{ID: "a", Addr: "127.0.0.1:1"}
	b := discovery.Target{ID: "b", Addr: "127.0.0.1:2"}
	b2 := discovery.Target{ID: "b", Addr: "127.0.0.1:22"}
	c := discovery.Target{ID: "c", Addr: "127.0.0.1:3"}
	tests := []struct {
		name      string
		prev, cur []discovery.Target
		want      []discovery.Target
	}{
		{"restarted agent answers empty: keep all", []discovery.Target{a, b}, nil, []discovery.Target{a, b}},
		{"addition passes, removal held", []discovery.Target{a, b}, []discovery.Target{c, a}, []discovery.Target{a, b, c}},
		{"current version of a kept instance wins", []discovery.Target{a, b}, []discovery.Target{b2}, []discovery.Target{a, b2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := union(tt.prev, tt.cur); !equalTargets(got, tt.want) {
				t.Errorf("union = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string // empty: valid
	}{
		{"", ""},
		{"127.0.0.1:8500", ""},
		{"http://127.0.0.1:8500", ""},
		{"https://consul.internal:8501", ""},
		{"[::1]:8500", ""},
		{"127.0.0.1", "want host:port"},
		{"ftp://127.0.0.1:8500", "scheme must be http or https"},
		{"127.0.0.1:http", "port must be a number"},
		{"127.0.0.1:0", "port must be a number"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := Config{Address: tt.addr}.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
