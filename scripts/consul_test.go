package scripts

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/discovery/consul/consultest"
	"github.com/podium-edge/podium/internal/testport"
)

// TestConsulStartWaitsForASlowExec holds scripts/consul.sh start to a child
// that takes its time to become consul. Between the fork and the exec the
// child is bash, then nohup; on a loaded machine that lasts long enough that
// a liveness check by /proc/PID/exe said "agent exited during start" with an
// empty log while the agent was on its way (TestDemo, 2 of ~33 stress runs).
// A nohup on PATH that sleeps 2 s before exec'ing the real one makes that
// window certain.
func TestConsulStartWaitsForASlowExec(t *testing.T) {
	bin, err := consultest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	realNohup, err := exec.LookPath("nohup")
	if err != nil {
		t.Fatal(err)
	}
	ports, err := testport.Free(4, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	shim := filepath.Join(dir, "path")
	if err := os.MkdirAll(shim, 0o755); err != nil {
		t.Fatal(err)
	}
	slow := fmt.Sprintf("#!/bin/sh\nsleep 2\nexec %s \"$@\"\n", realNohup)
	if err := os.WriteFile(filepath.Join(shim, "nohup"), []byte(slow), 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"PATH="+shim+string(os.PathListSeparator)+os.Getenv("PATH"),
		"PODIUM_CACHE="+filepath.Dir(filepath.Dir(bin)),
		"PODIUM_CONSUL_STATE="+filepath.Join(dir, "state"),
		fmt.Sprintf("PODIUM_CONSUL_HTTP_PORT=%d", ports[0]),
		fmt.Sprintf("PODIUM_CONSUL_SERVER_PORT=%d", ports[1]),
		fmt.Sprintf("PODIUM_CONSUL_SERF_LAN_PORT=%d", ports[2]),
		fmt.Sprintf("PODIUM_CONSUL_SERF_WAN_PORT=%d", ports[3]),
	)
	script := filepath.Join(root, "scripts", "consul.sh")
	run := func(arg string) (string, error) {
		cmd := exec.Command(script, arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := run("stop"); err != nil {
			t.Errorf("consul.sh stop: %v\n%s", err, out)
		}
	})
	start := time.Now()
	out, err := run("start")
	if err != nil {
		t.Fatalf("consul.sh start with a 2 s exec: %v\n%s", err, out)
	}
	if !strings.Contains(out, "consul.sh: started") {
		t.Fatalf("consul.sh start did not report a start:\n%s", out)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("start returned after %v, before the shim's 2 s: the shim was not used", d)
	}
	// The agent the pid file names is consul itself now, and it answers.
	if out, err := run("status"); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("consul.sh status after start: %v\n%s", err, out)
	}
}
