package healthcheck

import (
	"testing"

	"github.com/podium-edge/podium/config"
)

// A Prober left at its zero values probes as the edge's default config
// does: the defaults have one home, config, and the prober reads them there.
func TestZeroProberTakesTheConfigDefaults(t *testing.T) {
	var p Prober
	p.init()
	got := config.HealthCheck{Path: p.Path, Interval: config.Duration(p.Interval), Timeout: config.Duration(p.Timeout), Rise: p.Rise, Fall: p.Fall}
	if want := config.DefaultEdge().HealthCheck; got != want {
		t.Errorf("zero Prober probes with %+v, want the edge's default healthcheck %+v", got, want)
	}
}
