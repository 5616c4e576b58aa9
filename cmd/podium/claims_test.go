package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/discovery/consul/consultest"
)

// rejections are the errors of the edge's "config reload rejected" log
// lines, in order: the SIGHUP's and the file watcher's, which reloads each
// save too, 150 ms after it and at a time of its own under load.
func rejections(t *testing.T, logs *logBuffer) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec struct{ Msg, Error string }
		if json.Unmarshal([]byte(line), &rec) == nil && strings.HasPrefix(rec.Msg, "config reload rejected") {
			out = append(out, rec.Error)
		}
	}
	return out
}

// saveConfig puts text at path by renaming a new file over it, as editors
// do, so that no reload ever reads it half-written.
func saveConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// README, "Hot reload": a config that fails is refused and "the error with
// file:line is logged". Each bad file is saved and SIGHUP sent; the test
// waits for the next rejection in the log and reads where it points.
func TestRejectedReloadLogsFileAndLine(t *testing.T) {
	bin := buildPodium(t)
	up := httpUpstream(t)
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	good := edgeConfig(listen, admin, []int{1}, up)
	saveConfig(t, path, good)
	cmd, logs := startEdgeProcess(t, bin, "-config", path)
	waitOK(t, "http://"+listen+"/x")

	// What is appended to good is on line n.
	n := strings.Count(good, "\n") + 1
	cases := []struct {
		name, tail string
		want       []string // in the logged error, besides the file's path
	}{
		{"invalid value", "timeouts: {upstream: 0s}\n", []string{fmt.Sprintf("%s:%d: timeouts.upstream: must be > 0", path, n)}},
		{"unknown key", "intreval: 1s\n", []string{fmt.Sprintf("line %d", n), "unknown key intreval"}},
		// yaml.v3 puts some syntax errors a line early (an unclosed flow
		// sequence, "[broken", is reported on the line before it: go-yaml
		// issues 205 and 704); this one it places right.
		{"broken YAML", "listen: a: b\n", []string{fmt.Sprintf("line %d", n), "mapping values are not allowed"}},
	}
	for _, tc := range cases {
		before := len(rejections(t, logs))
		saveConfig(t, path, good+tc.tail)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// The SIGHUP's rejection or the file watcher's of the same save,
		// whichever comes first; one left by the case before names other
		// things, so the wait goes on until one names all of this case's.
		names := func(got string) bool {
			for _, want := range append(tc.want, path) {
				if !strings.Contains(got, want) {
					return false
				}
			}
			return true
		}
		for deadline := time.Now().Add(30 * time.Second); ; { // a hang guard
			got := rejections(t, logs)[before:]
			if slices.ContainsFunc(got, names) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no rejection logged in 30 s names the file and %q; logged since the save: %q", tc.name, tc.want, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// README, "Zero-downtime restart": after SIGTERM the edge answers with
// "Connection: close on every answer for -drain", so keep-alive clients
// reconnect to the edge taking over. Two keep-alive connections opened
// before the SIGTERM, one proxying and one asking /ping, each get one more
// answer during the drain: it says Connection: close, and the edge then
// closes the connection. -drain is long enough that the listener is still
// open throughout; the test does not wait for the exit
// (TestEdgeProcessServesAndDrains does).
func TestDrainingEdgeClosesEveryConnection(t *testing.T) {
	bin := buildPodium(t)
	up := httpUpstream(t)
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	saveConfig(t, path, edgeConfig(listen, admin, []int{1}, up))
	cmd, logs := startEdgeProcess(t, bin, "-config", path, "-drain", "30s")
	waitOK(t, "http://"+listen+"/x")

	type keepAlive struct {
		path string
		c    net.Conn
		br   *bufio.Reader
	}
	ask := func(k *keepAlive) *http.Response {
		t.Helper()
		k.c.SetDeadline(time.Now().Add(15 * time.Second)) // a hang guard
		if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: edge\r\n\r\n", k.path); err != nil {
			t.Fatalf("GET %s: %v", k.path, err)
		}
		resp, err := http.ReadResponse(k.br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v\n%s", k.path, err, logs)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	var conns []*keepAlive
	for _, p := range []string{"/x", "/ping"} {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		k := &keepAlive{path: p, c: c, br: bufio.NewReader(c)}
		if resp := ask(k); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("GET %s before SIGTERM: %d, Connection: close %v; want 200 on a kept-alive connection", p, resp.StatusCode, resp.Close)
		}
		conns = append(conns, k)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; ; i++ { // until the edge says it drains
		resp, err := http.Get("http://" + admin + "/ping")
		if err != nil {
			t.Fatalf("admin /ping after SIGTERM: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 503 && string(b) == "draining\n" {
			break
		}
		if i == 1500 {
			t.Fatalf("admin /ping 15 s after SIGTERM: %d %q, want 503 draining", resp.StatusCode, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range conns {
		// ReadResponse takes the Connection header out into Close: for an
		// HTTP/1.1 answer, Close is whether it said Connection: close.
		if resp := ask(k); !resp.Close {
			t.Errorf("GET %s while draining: %d without Connection: close", k.path, resp.StatusCode)
		}
		if n, err := k.br.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("GET %s while draining: the edge kept the connection open after its answer (read %d bytes, %v), want it closed", k.path, n, err)
		}
	}
}

// README, "Consul": "an origin gets traffic only when Consul says passing
// and the edge's own prober says up". Three origins register themselves
// with a Consul check on /ping; the edge probes /edge-check, which one of
// them answers 503. Consul says all three pass and the edge lists all
// three, the sick one with its failed probe; of the requests sent then,
// the sick one gets none.
func TestConsulPassingIsNotEnoughForTraffic(t *testing.T) {
	agent := consultest.Start(t)
	bin := buildPodium(t)
	good := []*consulOriginProc{startConsulOrigin(t, agent.Addr), startConsulOrigin(t, agent.Addr)}
	sick := startConsulOriginEnv(t, agent.Addr, "PODIUM_TEST_CONSUL_ORIGIN_FAIL=/edge-check")
	listen, admin := freePort(t), freePort(t)
	path := filepath.Join(t.TempDir(), "edge.yaml")
	saveConfig(t, path, fmt.Sprintf(`listen: %q
admin: %q
access_log: {enabled: false}
discovery:
  consul: {address: %q, service: podium-origin}
healthcheck: {interval: 1s, timeout: 800ms, path: /edge-check}
routes: [{name: all, match: {path_prefix: /}}]
ratelimits: {}
`, listen, admin, agent.Addr))
	_, logs := startEdgeProcess(t, bin, "-config", path)
	defer func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", logs)
		}
	}()
	consultest.WaitPassing(t, agent.Client(), "podium-origin", 30*time.Second, good[0].id, good[1].id, sick.id)

	// The edge knows all three: the good ones up, the sick one down after
	// probes that failed (fall), not merely not probed yet.
	type upstream struct {
		Address   string `json:"address"`
		Healthy   bool   `json:"healthy"`
		LastProbe *struct {
			Error               string `json:"error"`
			ConsecutiveFailures int    `json:"consecutive_failures"`
		} `json:"last_probe"`
	}
	var view map[string]upstream
	for i := 0; ; i++ {
		view = map[string]upstream{}
		if resp, err := http.Get("http://" + admin + "/upstreams"); err == nil {
			var body struct{ Upstreams []upstream }
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			for _, u := range body.Upstreams {
				view[u.Address] = u
			}
		}
		s := view[sick.addr]
		if view[good[0].addr].Healthy && view[good[1].addr].Healthy && s.LastProbe != nil && s.LastProbe.ConsecutiveFailures >= 3 {
			break
		}
		if i == 3000 {
			t.Fatalf("the edge's /upstreams 30 s after Consul said all passing: %+v; want %s and %s up and %s down after 3 failed probes", view, good[0].addr, good[1].addr, sick.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := view[sick.addr]; s.Healthy || !strings.Contains(s.LastProbe.Error, "503") {
		t.Fatalf("sick origin in the edge's view: healthy %v, last probe error %q; want down on its 503", s.Healthy, s.LastProbe.Error)
	}

	got := map[string]int{}
	client := &http.Client{Timeout: 10 * time.Second}
	for range 200 {
		resp, err := client.Get("http://" + listen + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /x: %d %.80q", resp.StatusCode, b)
		}
		got[string(b)]++
	}
	if got[sick.addr] != 0 {
		t.Errorf("%d of 200 requests went to %s, which Consul says is passing and the edge's prober says is down; want 0 (by origin: %v)", got[sick.addr], sick.addr, got)
	}
	if got[good[0].addr] == 0 || got[good[1].addr] == 0 {
		t.Errorf("requests by origin %v: want both passing, probed-up origins %s and %s served", got, good[0].addr, good[1].addr)
	}
}
