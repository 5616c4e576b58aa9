package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// dropAfterForward is an origin that dies after doing the work: it passes
// each request to a real origin, and for purchases it then drops the
// connection without a byte of answer, as an origin killed after its
// COMMIT and before its reply would. Everything else it answers.
type dropAfterForward struct {
	addr    string
	dropped atomic.Int64
}

func startDropAfterForward(t *testing.T, origin string) *dropAfterForward {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	d := &dropAfterForward{addr: ln.Addr().String()}
	target, _ := url.Parse(origin)
	client := &http.Client{Timeout: 10 * time.Second}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					out, _ := http.NewRequest(req.Method, "http://"+target.Host+req.URL.RequestURI(), bytes.NewReader(body))
					out.Header = req.Header.Clone()
					resp, err := client.Do(out)
					if err != nil {
						return
					}
					if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/buy") {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						d.dropped.Add(1)
						c.(*net.TCPConn).SetLinger(0) // reset, as a killed process's socket is
						return
					}
					resp.Write(c)
					resp.Body.Close()
				}
			}()
		}
	}()
	return d
}

// seatsSold reads from the primary how many tickets an email holds.
func (s *stack) seatsSold(t *testing.T, email string) int {
	t.Helper()
	out, err := exec.Command(s.script, "sql", "primary",
		fmt.Sprintf("SELECT COALESCE(SUM(quantity),0) FROM podium.tickets WHERE email = '%s'", email), s.dbDir).CombinedOutput()
	if err != nil {
		t.Fatalf("counting tickets: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	n, err := strconv.Atoi(fields[len(fields)-1])
	if err != nil {
		t.Fatalf("counting tickets: %q", out)
	}
	return n
}

// testPurchaseRetry is the purchase retry end to end: an edge whose
// first choice is an origin that dies after the COMMIT. Without an
// Idempotency-Key the fan gets 502 and the edge does not resend (the seats
// were sold once, by the dead origin); with a key the edge retries on the
// other origin, which answers from the key, and the database holds
// exactly one order.
func testPurchaseRetry(t *testing.T, s *stack, game int64) {
	front := startDropAfterForward(t, s.originURLs[0])
	second, _ := url.Parse(s.originURLs[1])
	ports := freePorts(t, 2)
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfg := filepath.Join(t.TempDir(), "edge-retry.yaml")
	// The dying origin carries all the weight, so it is always picked first.
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %q
admin: %q
discovery:
  static:
    - {addr: %q, weight: 1000}
    - {addr: %q, weight: 1}
healthcheck: {interval: 500ms, timeout: 250ms}
outlier: {consecutive_failures: 0}
ratelimits: {}
routes:
  - {name: buy, match: {path: "/api/games/*/buy", methods: [POST]}}
  - {name: default, match: {path_prefix: /}}
`, listen, admin, front.addr, second.Host)), 0o644)
	edge := s.start(t, "edge-retry", podiumBin, "edge", "-config", cfg, "-drain", "0s")
	s.waitFor(t, edge, "http://"+listen+"/api/games/"+strconv.FormatInt(game, 10), 20*time.Second)
	// Both origins in rotation before the purchases: the dying one must be
	// the one picked. (A first health check that times out on a busy
	// machine starts it down, and every purchase then went to the other.)
	for deadline := time.Now().Add(30 * time.Second); ; {
		var ups struct {
			Upstreams []struct {
				InRotation bool `json:"in_rotation"`
			} `json:"upstreams"`
		}
		resp, body := s.do(t, http.MethodGet, "http://"+admin+"/upstreams", "")
		in := 0
		if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &ups) == nil {
			for _, u := range ups.Upstreams {
				if u.InRotation {
					in++
				}
			}
		}
		if in == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the retry edge's upstreams are not both in rotation after 30 s: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	buy := "http://" + listen + "/api/games/" + strconv.FormatInt(game, 10) + "/buy"
	run := time.Now().UnixNano()

	noKey := fmt.Sprintf("nokey-%d@podium.example", run)
	resp, body := s.do(t, http.MethodPost, buy, fmt.Sprintf(`{"quantity":2,"email":%q}`, noKey))
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("purchase without a key, origin dead after COMMIT: %d %s, want 502", resp.StatusCode, body)
	}
	if got := s.seatsSold(t, noKey); got != 2 {
		t.Errorf("without a key: %d seats sold to %s, want 2 (once, by the origin that died; the edge must not resend)", got, noKey)
	}

	withKey := fmt.Sprintf("key-%d@podium.example", run)
	resp, body = s.do(t, http.MethodPost, buy, fmt.Sprintf(`{"quantity":2,"email":%q}`, withKey),
		"Idempotency-Key", fmt.Sprintf("e2e-retry-%d", run))
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Podium-Retries") != "1" {
		t.Errorf("purchase with a key: %d (X-Podium-Retries %q) %s, want 201 after one retry", resp.StatusCode, resp.Header.Get("X-Podium-Retries"), body)
	}
	if got := s.seatsSold(t, withKey); got != 2 {
		t.Errorf("with a key: %d seats sold to %s, want exactly 2: one order", got, withKey)
	}
	if n := front.dropped.Load(); n != 2 {
		t.Errorf("the dying origin dropped %d purchases, want 2 (one per attempt that reached it)", n)
	}
}
