package proxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/podium-edge/podium/config"
	"github.com/valyala/fasthttp"
)

func startAdmin(t *testing.T, e *testEdge) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: e.p.AdminHandler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminMetrics(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Routes = []config.Route{{Name: "api", Match: config.Match{PathPrefix: "/api"}}}
	})
	admin := startAdmin(t, e)
	for range 3 {
		get(t, e.url("/api/games"))
	}
	get(t, e.url("/nowhere"))
	code, body := get(t, admin+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`podium_edge_requests_total{code="200",method="GET",route="api"} 3`,
		`podium_edge_requests_total{code="404",method="GET",route="none"} 1`,
		`podium_edge_errors_total{kind="no_route"} 1`,
		`podium_edge_errors_total{kind="smuggling_rejected"} 0`,
		`podium_edge_upstream_request_duration_seconds_count{upstream="` + u.addr + `"} 3`,
		`podium_edge_upstream_in_flight_requests{upstream="` + u.addr + `"} 0`,
		`podium_edge_upstream_up{upstream="` + u.addr + `"} 1`,
		`podium_edge_healthcheck_duration_seconds_count{upstream="` + u.addr + `"}`,
		`podium_edge_upstream_state_changes_total{state="up",upstream="` + u.addr + `"} 1`,
		`podium_edge_in_flight_requests 0`,
		`podium_edge_request_duration_seconds_count{route="api"} 3`,
		`go_goroutines`,
		`process_cpu_seconds_total`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// promtool, Prometheus's own linter, must find nothing to complain of
	// in the metric names, types and help texts.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (scripts/deps.sh obs installs it): %v", err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}
}

func TestAdminConfigAndPing(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil)
	admin := startAdmin(t, e)
	code, body := get(t, admin+"/config")
	if code != 200 {
		t.Fatalf("/config = %d", code)
	}
	cfg, err := config.Load("admin /config", []byte(body))
	if err != nil {
		t.Fatalf("/config output does not load as a config: %v\n%s", err, body)
	}
	if cfg.Discovery.Static[0].Addr != u.addr {
		t.Errorf("/config shows upstream %q, want %q", cfg.Discovery.Static[0].Addr, u.addr)
	}
	if code, body := get(t, admin+"/ping"); code != 200 || body != "pong\n" {
		t.Errorf("admin /ping = %d %q", code, body)
	}
	if code, _ := get(t, admin+"/nope"); code != 404 {
		t.Errorf("admin /nope = %d, want 404", code)
	}
}
