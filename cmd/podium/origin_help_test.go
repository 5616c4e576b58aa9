package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Flags that took their defaults from the environment would have
// `podium origin -h` print the primary DSN with its password and the
// Consul token. The real binary's help, with every secret-bearing variable
// set, must name the variables without their values.
func TestOriginHelpHidesEnvironmentValues(t *testing.T) {
	bin := buildPodium(t)
	secrets := map[string]string{
		"PODIUM_DB_PRIMARY":         "podium_app:Pr1mary-S3cret@tcp(127.0.0.1:3307)/podium",
		"PODIUM_DB_REPLICAS":        "podium_app:R3plica-S3cret@tcp(127.0.0.1:3308)/podium",
		"PODIUM_DB_MIGRATE":         "podium_migrate:M1grate-S3cret@tcp(127.0.0.1:3307)/podium",
		"PODIUM_CONSUL_TOKEN":       "c0nsul-t0ken-S3cret",
		"PODIUM_ORIGIN_FORM_SECRET": "f0rm-S3cret-0123456789abcdef",
	}
	for _, args := range [][]string{{"origin", "-h"}, {"origin", "-help"}, {"origin", "migrate", "-h"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, args...)
			cmd.Env = os.Environ()
			for k, v := range secrets {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatal(err)
			}
			if cmd.ProcessState.ExitCode() != 0 {
				t.Errorf("exit code %d, want 0 for help", cmd.ProcessState.ExitCode())
			}
			help := string(out)
			for name, v := range secrets {
				if strings.Contains(help, v) {
					t.Errorf("help shows %s's value:\n%s", name, help)
				}
			}
			// A password alone leaks as much as its DSN.
			if strings.Contains(help, "S3cret") || strings.Contains(help, "t0ken") {
				t.Errorf("help shows part of a secret:\n%s", help)
			}
			wantSet := "PODIUM_DB_MIGRATE is set"
			if args[1] != "migrate" {
				wantSet = "PODIUM_DB_PRIMARY is set"
			}
			if !strings.Contains(help, wantSet) {
				t.Errorf("help does not say %q:\n%s", wantSet, help)
			}
		})
	}
}

// The variables still configure the origin when their flag is not given,
// and a flag beats its variable: here the primary DSN and the listener come
// from the environment (the /ping answer names the primary's address), a
// malformed number is ignored with a warning that does not echo it, and
// -drain on the command line beats PODIUM_ORIGIN_DRAIN.
func TestOriginFlagsFallBackToEnvironment(t *testing.T) {
	bin := buildPodium(t)
	listen, deadDB := freePort(t), freePort(t) // nothing listens on deadDB
	cmd := exec.Command(bin, "origin", "-drain", "0s")
	cmd.Env = append(os.Environ(),
		"PODIUM_DB_PRIMARY=podium_app:Pr1mary-S3cret@tcp("+deadDB+")/podium",
		"PODIUM_ORIGIN_LISTEN="+listen,
		"PODIUM_ORIGIN_MAX_PER_ORDER=m4ny",
		"PODIUM_ORIGIN_DRAIN=1h",
		"PODIUM_ORIGIN_HEALTH_INTERVAL=50ms",
	)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	var body string
	for i := 0; ; i++ {
		if i > 1500 {
			t.Fatalf("the origin never answered /ping on %s; output:\n%s", listen, out.String())
		}
		resp, err := http.Get("http://" + listen + "/ping")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(body, deadDB) {
		t.Errorf("/ping %q does not name the primary from PODIUM_DB_PRIMARY (%s)", body, deadDB)
	}
	cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("origin exit: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the origin did not stop within 30s of SIGTERM: -drain 0s should beat PODIUM_ORIGIN_DRAIN=1h\n%s", out.String())
	}
	logs := out.String()
	if !strings.Contains(logs, "ignoring PODIUM_ORIGIN_MAX_PER_ORDER") || strings.Contains(logs, "m4ny") {
		t.Errorf("a malformed PODIUM_ORIGIN_MAX_PER_ORDER should be ignored with a warning that does not echo it:\n%s", logs)
	}
	if strings.Contains(logs, "S3cret") {
		t.Errorf("the origin's output shows the primary's password:\n%s", logs)
	}
}

// lockedBuffer collects a child process's output from two pipes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
