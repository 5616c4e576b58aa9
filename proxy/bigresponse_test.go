package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// Pipelined requests: a big response goes out when it is ready, not when
// the next request's (slow) answer is.
func TestEdgePipelinedBigResponseNotHeldBack(t *testing.T) {
	// /slow answers only once the test has read the big response before
	// it: an edge that held the big one back until the slow one was ready
	// would never deliver it, and the read below would hit its deadline.
	u := newUpstream(t)
	var slow atomic.Pointer[chan struct{}]
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-*slow.Load()
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Write(bytes.Repeat([]byte{'z'}, n))
	}
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Timeouts.Upstream = config.Duration(time.Minute)
	})
	for _, n := range []int{3000, 4000, 6000, 9000} {
		release := make(chan struct{})
		slow.Store(&release)
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /big?n=" + strconv.Itoa(n) + " HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
		}
		close(release)
		if err == nil && len(body) == n {
			// And the slow answer follows on the same connection.
			if resp, err = http.ReadResponse(br, nil); err == nil {
				_, err = io.ReadAll(resp.Body)
			}
		}
		c.Close()
		if err != nil || len(body) != n {
			t.Fatalf("a %d-byte response pipelined before one that waits for it: got %d bytes, %v", n, len(body), err)
		}
	}
}

// Through the edge, responses around and over the write buffer arrive
// whole, and a client that closes after each gets every byte.
func TestEdgeResponsesAroundWriteBuffer(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(bytes.Repeat([]byte{'z'}, n))
	}
	e := startEdge(t, []*testUpstream{u}, nil)
	client := &http.Client{Timeout: 5 * time.Second}
	sizes := []int{0, 1, 2048, 8192, 12000, 100000, 1 << 20}
	for n := 3700; n <= 4100; n++ { // one of these makes header+body exactly a full buffer
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		for _, closing := range []bool{false, true} {
			req, _ := http.NewRequest("GET", e.url("/blob?n="+strconv.Itoa(n)), nil)
			req.Close = closing
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%d bytes (close %v): %v", n, closing, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || len(body) != n || bytes.Count(body, []byte{'z'}) != n {
				t.Fatalf("%d bytes (close %v): status %d, got %d bytes, %v", n, closing, resp.StatusCode, len(body), err)
			}
		}
	}
}
