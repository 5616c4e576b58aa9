package bench

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestShippedScenariosLoad(t *testing.T) {
	want := []string{"browse", "buy-storm", "cached-listing", "mixed-abuse", "proxied-get", "ticket-drop"}
	if got := strings.Join(ScenarioNames(), ","); got != strings.Join(want, ",") {
		t.Fatalf("shipped scenarios = %s, want %s", got, strings.Join(want, ","))
	}
	for _, name := range want {
		sc, err := LoadScenario(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if sc.Name != name {
			t.Errorf("%s: name %q", name, sc.Name)
		}
	}
	td, _ := LoadScenario("ticket-drop")
	if r := td.Streams[0].Rate; r.Start != 0 || r.Ramp == 0 || r.Peak <= 0 {
		t.Errorf("ticket-drop must ramp from 0: %+v", r)
	}
	ma, _ := LoadScenario("mixed-abuse")
	if len(ma.Streams) != 2 {
		t.Errorf("mixed-abuse has %d streams, want fans and abusers", len(ma.Streams))
	}
	// The answers a scenario calls right: buy-storm's sold-out 409s, the
	// abusers' 429s; never the fans' 429s.
	bs, _ := LoadScenario("buy-storm")
	if m := bs.Streams[0].Mix[0]; m.Op != OpBuy || !m.expects(409) {
		t.Errorf("buy-storm's buy expects %v, want 409", m.Expect)
	}
	for _, m := range ma.Streams[1].Mix {
		if !m.expects(429) {
			t.Errorf("mixed-abuse abusers' %s expects %v, want 429", m.Op, m.Expect)
		}
	}
	for _, m := range ma.Streams[0].Mix {
		if len(m.Expect) != 0 {
			t.Errorf("mixed-abuse fans' %s expects %v; a fan's error is an error", m.Op, m.Expect)
		}
	}
}

func TestBadScenariosRejected(t *testing.T) {
	base := "name: x\nduration: 1s\nstreams:\n  - connections: 1\n    rate: {peak: 10}\n    mix: [{op: list, weight: 1}]\n"
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"unknown key", strings.Replace(base, "connections", "conections", 1), "conections"},
		{"bad mode", base + "mode: fast\n", "mode"},
		{"no duration", strings.Replace(base, "duration: 1s\n", "", 1), "duration"},
		{"no connections", strings.Replace(base, "connections: 1", "connections: 0", 1), "connections"},
		{"no rate in open mode", strings.Replace(base, "rate: {peak: 10}", "rate: {peak: 0}", 1), "rate"},
		{"bad op", strings.Replace(base, "op: list", "op: delete", 1), "delete"},
		{"game range", base + "games: {first: 5, last: 2}\n", "games"},
		{"get without path", strings.Replace(base, "op: list", "op: get", 1), "path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseScenario([]byte(tc.yaml), "test.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	if _, err := ParseScenario([]byte(base), "test.yaml"); err != nil {
		t.Errorf("the base scenario itself must be valid: %v", err)
	}
}

// The synthetic upstream answers /ping with pong and anything else with
// the fixed body, over real loopback TCP.
func TestUpstreamServes(t *testing.T) {
	lns, err := ListenAll("127.0.0.1:0,127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&Upstream{Size: 2048, ListingSize: 8192, ListingCacheControl: "public, max-age=2"}).Serve(ctx, lns...)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	for _, ln := range lns {
		addr := ln.Addr().(*net.TCPAddr).String()
		for _, tc := range []struct {
			path string
			want int
			body string
		}{{"/ping", 4, "pong"}, {"/bench/payload", 2048, ""}} {
			status, body, err := fasthttp.GetTimeout(nil, "http://"+addr+tc.path, 5*time.Second)
			if err != nil || status != 200 || len(body) != tc.want || (tc.body != "" && string(body) != tc.body) {
				t.Errorf("%s%s: status %d, %d bytes, err %v; want 200 with %d bytes", addr, tc.path, status, len(body), err, tc.want)
			}
		}
		// The listing is JSON about ListingSize long, cacheable.
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://" + addr + "/api/games?limit=50")
		if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		var games []map[string]any
		if err := json.Unmarshal(resp.Body(), &games); err != nil || len(games) < 10 {
			t.Errorf("listing: %d games, %v", len(games), err)
		}
		if n := len(resp.Body()); n < 7000 || n > 8192 {
			t.Errorf("listing is %d bytes, want about 8192", n)
		}
		if cc := string(resp.Header.Peek("Cache-Control")); cc != "public, max-age=2" {
			t.Errorf("listing Cache-Control %q", cc)
		}
	}
	// Every request but /ping and the stats themselves was counted: 2
	// listeners × (1 payload + 1 listing).
	_, body, err := fasthttp.GetTimeout(nil, "http://"+lns[0].Addr().String()+UpstreamStatsPath, 5*time.Second)
	if err != nil || string(body) != `{"requests":4}` {
		t.Errorf("stats = %s, %v; want {\"requests\":4}", body, err)
	}
}
