package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/testport"
)

// buildPodium builds the real binary once per test run.
func buildPodium(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "podium")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freePort is a free loopback address for a process the test starts
// (internal/testport says why not ":0").
func freePort(t *testing.T) string {
	t.Helper()
	ports, err := testport.Free(1, false)
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(ports[0])
}

func TestEdgeRejectsBadConfig(t *testing.T) {
	bin := buildPodium(t)
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		want       string
	}{
		{"broken YAML", "listen: [\n", "parsing YAML file"},
		{"invalid value", "listen: \":8080\"\nhealthcheck:\n  interval: 0s\n", "edge.yaml:3: healthcheck.interval: must be > 0, got 0s"},
		{"unknown key", "lisen: \":8080\"\n", "unknown key lisen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "edge.yaml")
			os.WriteFile(path, []byte(tc.yaml), 0o644)
			out, err := exec.Command(bin, "edge", "-config", path).CombinedOutput()
			var ee *exec.ExitError
			if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("podium edge with %s: err %v, want exit status 1\n%s", tc.name, err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output %q does not name %q", out, tc.want)
			}
		})
	}
	out, err := exec.Command(bin, "edge", "-config", filepath.Join(dir, "missing.yaml")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no such file") {
		t.Errorf("missing config: err %v, output %q", err, out)
	}
	out, err = exec.Command(bin, "edge", "-upstreams", "nocolon").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `discovery.static[0]: must be host:port, got "nocolon"`) {
		t.Errorf("bad -upstreams: err %v, output %q", err, out)
	}
}

func TestEdgeProcessServesAndDrains(t *testing.T) {
	bin := buildPodium(t)
	// An upstream, so the edge has somewhere to send traffic.
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from upstream") })}
	go up.Serve(upLn)
	defer up.Close()

	listen, admin := freePort(t), freePort(t)
	cmd := exec.Command(bin, "edge", "-listen", listen, "-admin", admin, "-upstreams", upLn.Addr().String(), "-drain", "3s")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	deadline := time.Now().Add(30 * time.Second) // a hang guard
	var body string
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + listen + "/hello")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if body = string(b); resp.StatusCode == 200 {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body != "from upstream" {
		t.Fatalf("edge did not proxy within 30s: last body %q", body)
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin /metrics: %v %v", err, resp)
	}
	resp.Body.Close()

	// SIGTERM: /ping turns 503 draining while the listener still serves,
	// then the process exits 0. Asked until it says so: every answer
	// before is pong, and none may be a refused connection.
	cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; ; i++ {
		resp, err = http.Get("http://" + listen + "/ping")
		if err != nil {
			t.Fatalf("edge stopped listening before its /ping said draining: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 503 && string(b) == "draining\n" {
			break
		}
		if resp.StatusCode != 200 || string(b) != "pong\n" || i == 3000 {
			t.Fatalf("/ping after SIGTERM = %d %q (answer %d), want pong until 503 draining", resp.StatusCode, b, i)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitExit(t, cmd, 30*time.Second, "edge")
}

// waitExit waits for a process sent SIGTERM to exit with status 0.
func waitExit(t *testing.T, cmd *exec.Cmd, timeout time.Duration, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited with %v, want 0", what, err)
		}
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v of SIGTERM", what, timeout)
	}
}

// TestEdgeCheck: `podium edge -check` validates, prints the effective config
// (which loads back as a config) and exits 0; what validation assumed is
// said on stderr; a bad config exits 1 without printing a config.
func TestEdgeCheck(t *testing.T) {
	bin := buildPodium(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.yaml")
	os.WriteFile(path, []byte("ratelimits:\n  default: {rate: 20, burst: 40}\n"), 0o644)
	cmd := exec.Command(bin, "edge", "-check", "-config", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("-check on a config with only ratelimits.default: %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"note: route buy (embedded default)", "it uses default", "Define ratelimits.buy"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
	if !strings.Contains(string(out), "rate: 20") || strings.Contains(string(out), "note:") {
		t.Errorf("stdout is not the effective config alone:\n%s", out)
	}
	// The printed config is itself a valid config that needs no fallback.
	effective := filepath.Join(dir, "effective.yaml")
	os.WriteFile(effective, out, 0o644)
	cmd = exec.Command(bin, "edge", "-check", "-config", effective)
	stderr.Reset()
	cmd.Stderr = &stderr
	again, err := cmd.Output()
	if err != nil || string(again) != string(out) || stderr.Len() != 0 {
		t.Errorf("-check on its own output: err %v, stderr %q, same output %v", err, stderr.String(), string(again) == string(out))
	}
	os.WriteFile(path, []byte("healthcheck: {interval: 0s}\n"), 0o644)
	out, err = exec.Command(bin, "edge", "-check", "-config", path).Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || len(out) != 0 {
		t.Errorf("-check on a bad config: err %v, stdout %q; want exit 1 and no config", err, out)
	}

	// A waiting room: its key file, named relative to the config, is read
	// by -check and printed as the path read, so the printed config loads
	// from anywhere; a broken key file names itself and its line.
	keys := "id " + strings.Repeat("01", 32) + "\nsign 1 " + strings.Repeat("02", 32) + "\n"
	os.WriteFile(filepath.Join(dir, "final.keys"), []byte(keys), 0o600)
	os.WriteFile(path, []byte("waiting_rooms:\n  - {name: final, paths: [/api/games/*/buy], admit_per_second: 50, key_file: final.keys}\nwaiting_room_state_dir: state\n"), 0o644)
	out, err = exec.Command(bin, "edge", "-check", "-config", path).Output()
	if err != nil || !strings.Contains(string(out), "key_file: "+filepath.Join(dir, "final.keys")) || !strings.Contains(string(out), "refresh: 5s") ||
		!strings.Contains(string(out), "waiting_room_state_dir: "+filepath.Join(dir, "state")) {
		t.Fatalf("-check on a waiting room: err %v, want the key file's path and the defaults in:\n%s", err, out)
	}
	elsewhere := filepath.Join(t.TempDir(), "effective.yaml")
	os.WriteFile(elsewhere, out, 0o644)
	if again, err := exec.Command(bin, "edge", "-check", "-config", elsewhere).Output(); err != nil || string(again) != string(out) {
		t.Errorf("-check on its printed waiting room, from another directory: err %v, same %v", err, string(again) == string(out))
	}
	os.WriteFile(filepath.Join(dir, "final.keys"), []byte(keys+"sign 1 "+strings.Repeat("03", 32)+"\n"), 0o600)
	cmd = exec.Command(bin, "edge", "-check", "-config", path)
	stderr.Reset()
	cmd.Stderr = &stderr
	if _, err := cmd.Output(); err == nil || !strings.Contains(stderr.String(), "edge.yaml:2: waiting_rooms[0].key_file: "+filepath.Join(dir, "final.keys")+":3: kid 1 is listed twice") {
		t.Errorf("-check on a broken key file: err %v, stderr %q", err, stderr.String())
	}
}
