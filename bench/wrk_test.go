package bench

import (
	"strings"
	"testing"
	"time"
)

// wrk's summary line becomes a Result: every error kind counted, answers
// that are not 2xx/3xx among them, throughput over wrk's own elapsed time.
func TestParseWrkSummary(t *testing.T) {
	out := "Running 5s test @ http://127.0.0.1:8080/\n  1 threads and 64 connections\n" +
		wrkMarker + `{"requests":200000,"duration_us":5000000,"bytes":440000000,"connect":1,"read":2,"write":0,"status":3,"timeout":4,` +
		`"mean_us":1500.5,"p50_us":1400,"p90_us":2000,"p99_us":3000,"p999_us":5000,"max_us":9000}` + "\n"
	s, err := parseWrk([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	res := s.result("http://127.0.0.1:8080/", 5*time.Second)
	if got, want := res.Throughput, 40000.0; got != want {
		t.Errorf("throughput = %v, want %v", got, want)
	}
	if got, want := res.ErrorCount, int64(10); got != want {
		t.Errorf("error count = %d, want %d", got, want)
	}
	want := map[string]int64{"refused": 1, "read": 2, "http_not_2xx_3xx": 3, "timeout": 4}
	for k, v := range want {
		if res.Errors[k] != v {
			t.Errorf("errors[%s] = %d, want %d (all: %v)", k, res.Errors[k], v, res.Errors)
		}
	}
	if _, ok := res.Errors["write"]; ok {
		t.Errorf("a zero error kind is listed: %v", res.Errors)
	}
	if l := res.Latency; l.P50 != 1400 || l.P99 != 3000 || l.P999 != 5000 || l.Max != 9000 || l.Count != 200000 {
		t.Errorf("latency = %+v", l)
	}

	for _, bad := range []string{"no summary here\n", wrkMarker + "{not json\n"} {
		if _, err := parseWrk([]byte(bad)); err == nil {
			t.Errorf("parseWrk(%q) succeeded", bad)
		}
	}
	if _, err := parseWrk([]byte("unable to connect to 127.0.0.1:1 Connection refused\n")); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error %v does not carry wrk's own words", err)
	}
}
