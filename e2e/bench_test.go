package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/podium-edge/podium/bench"
	"github.com/podium-edge/podium/origin"
)

// testBenchScenarios checks the shipped `podium bench` scenarios against
// the real origin: the game ids their detail and buy requests draw from
// exist, the sports their listings filter on have games, their listing
// limit is one the origin accepts, and their purchase quantity is within
// the origin's default -max-per-order. A scenario that breaks one of these
// measures 404s, empty pages or 422s instead of what it claims to.
func testBenchScenarios(t *testing.T, s *stack, ss schemas) {
	origin0 := s.originURLs[0]
	exists := map[int64]bool{}
	for _, name := range bench.ScenarioNames() {
		sc, err := bench.LoadScenario(name)
		if err != nil {
			t.Fatalf("bench scenario %s: %v", name, err)
		}
		ops := map[bench.Op]int{} // op → largest quantity
		for _, st := range sc.Streams {
			for _, m := range st.Mix {
				ops[m.Op] = max(ops[m.Op], m.Quantity)
			}
		}
		_, detail := ops[bench.OpDetail]
		_, buy := ops[bench.OpBuy]
		if detail || buy {
			var missing []int
			for id := sc.Games.First; id <= sc.Games.Last; id++ {
				if _, ok := exists[int64(id)]; !ok {
					resp, body := s.get(t, fmt.Sprintf("%s/api/games/%d", origin0, id))
					exists[int64(id)] = resp.StatusCode == http.StatusOK
					if resp.StatusCode == http.StatusOK {
						ss.check(t, "game", fmt.Sprintf("game %d", id), body)
					}
				}
				if !exists[int64(id)] {
					missing = append(missing, id)
				}
			}
			if len(missing) > 0 {
				t.Errorf("bench scenario %s: games %d-%d, but the origin has no game %v: fix games: in bench/scenarios/%s.yaml",
					name, sc.Games.First, sc.Games.Last, missing, name)
			}
		}
		if q := ops[bench.OpBuy]; buy && q > origin.DefaultMaxPerOrder {
			t.Errorf("bench scenario %s buys %d seats at once; the origin refuses more than %d (422)", name, q, origin.DefaultMaxPerOrder)
		}
		if _, list := ops[bench.OpList]; list {
			for _, sport := range sc.Sports {
				q := "/api/games?limit=1&sport=" + url.QueryEscape(sport)
				resp, body := s.get(t, origin0+q)
				var page struct{ Count int }
				if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &page) != nil || page.Count == 0 {
					t.Errorf("bench scenario %s filters on sport %q, which has no games on the origin: %d %.200s", name, sport, resp.StatusCode, body)
				}
			}
			if sc.ListLimit != 0 {
				resp, body := s.get(t, fmt.Sprintf("%s/api/games?limit=%d", origin0, sc.ListLimit))
				if resp.StatusCode != http.StatusOK {
					t.Errorf("bench scenario %s lists with limit=%d: the origin answers %d %.200s", name, sc.ListLimit, resp.StatusCode, body)
				} else {
					ss.check(t, "listing", "bench "+name+" listing", body)
				}
			}
		}
		t.Logf("bench scenario %s: ops %v, games %d-%d, sports %s", name, ops, sc.Games.First, sc.Games.Last, strings.Join(sc.Sports, ","))
	}
}
