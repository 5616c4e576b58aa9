package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/podium-edge/podium/internal/testport"
)

// child is a process the comparison started, with its log.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

// start runs argv pinned to cpu, in its own process group so that a
// proxy's workers go down with it.
func (c *comparison) start(name, cpu string, env []string, argv ...string) (*child, error) {
	logf, err := os.Create(filepath.Join(c.dir, "logs", name+".log"))
	if err != nil {
		return nil, fmt.Errorf("creating log for %s: %w", name, err)
	}
	cmd := exec.Command(c.opts.Taskset, c.pinned(cpu, argv)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	ownProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	ch := &child{name: name, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		ch.err = cmd.Wait()
		close(ch.done)
	}()
	return ch, nil
}

func (ch *child) exited() bool {
	select {
	case <-ch.done:
		return true
	default:
		return false
	}
}

// pinned returns taskset's arguments to run argv on cpu at the configured
// priority. taskset, chrt and nice all exec, so the pid started is argv's
// own.
func (c *comparison) pinned(cpu string, argv []string) []string {
	args := []string{"-c", cpu}
	switch c.opts.Priority {
	case PriorityRealtime:
		args = append(args, "chrt", "--fifo", "10")
	case PriorityNice:
		args = append(args, "nice", "-n", "-10")
	}
	return append(args, argv...)
}

// stop ends the child with SIGTERM, then SIGKILL after 5 s, signalling its
// process group (the pid we started is the group's leader).
func (ch *child) stop() {
	if !ch.exited() {
		signalGroup(ch.cmd, false)
		select {
		case <-ch.done:
		case <-time.After(5 * time.Second):
			signalGroup(ch.cmd, true)
			<-ch.done
		}
	}
	ch.log.Close()
}

// tail returns the last lines of the child's log, for failure reports.
func (ch *child) tail() string {
	data, _ := os.ReadFile(ch.log.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// freeAddr is a loopback address for a proxy or upstream the comparison
// starts: drawn below the ephemeral range and claimed for this process
// (internal/testport), so no outgoing connection takes it before the child
// binds it (HAProxy once failed to start: address already in use, beside
// the test suite under load).
func freeAddr() (string, error) {
	ports, err := testport.Free(1, false)
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	return "127.0.0.1:" + strconv.Itoa(ports[0]), nil
}
