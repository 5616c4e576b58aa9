package proxy

import (
	"bytes"

	"github.com/podium-edge/podium/cache"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/ratelimit"
)

// route is a compiled config.Route.
type route struct {
	name     string
	exact    [][]byte // path segments; "*" matches any one segment
	prefix   []byte   // path_prefix, matched on segment boundaries
	isPrefix bool
	methods  [][]byte // empty: any
	cache    *cache.Policy
	purge    []string // path prefixes purged on success; "$1" is the first "*" segment
	starSeg  int      // index in exact of the first "*", -1 if none
	counts   *routeCounts
	policy   string                 // rate limit policy name; "" for none
	inflight *ratelimit.Concurrency // max_in_flight; nil for no cap
}

func newRoute(r config.Route) route {
	rt := route{name: r.Name, purge: r.Purge, starSeg: -1}
	if c := r.Cache; c != nil {
		rt.cache = &cache.Policy{
			TTL:                  c.TTL.D(),
			MaxTTL:               c.MaxTTL.D(),
			StaleIfError:         c.StaleIfError.D(),
			StaleWhileRevalidate: c.StaleWhileRevalidate.D(),
			MaxEntryBytes:        c.MaxEntryBytes,
		}
	}
	for _, m := range r.Match.Methods {
		rt.methods = append(rt.methods, []byte(m))
	}
	if r.Match.PathPrefix != "" {
		rt.isPrefix = true
		rt.prefix = []byte(r.Match.PathPrefix)
		return rt
	}
	rt.exact = bytes.Split([]byte(r.Match.Path), []byte{'/'})
	for i, seg := range rt.exact {
		if bytes.Equal(seg, star) {
			rt.starSeg = i
			break
		}
	}
	return rt
}

var star = []byte("*")

// matches reports whether method and path select the route. It allocates
// nothing.
func (r *route) matches(method, path []byte) bool {
	if len(r.methods) > 0 {
		ok := false
		for _, m := range r.methods {
			if bytes.Equal(m, method) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if r.isPrefix {
		if !bytes.HasPrefix(path, r.prefix) {
			return false
		}
		// "/api" matches "/api" and "/api/x", not "/apix"; "/" matches all.
		rest := path[len(r.prefix):]
		return len(rest) == 0 || rest[0] == '/' || r.prefix[len(r.prefix)-1] == '/'
	}
	for i, seg := range r.exact {
		var cur []byte
		if j := bytes.IndexByte(path, '/'); j >= 0 {
			cur, path = path[:j], path[j+1:]
		} else {
			cur, path = path, nil
			if i != len(r.exact)-1 {
				return false
			}
		}
		if !bytes.Equal(seg, star) && !bytes.Equal(seg, cur) || bytes.Equal(seg, star) && len(cur) == 0 {
			return false
		}
		if i == len(r.exact)-1 && path != nil {
			return false
		}
	}
	return true
}

// match returns the first route that selects the request, or nil. Routes
// are tried in config order, as in Envoy.
func (st *state) match(method, path []byte) *route {
	for i := range st.routes {
		if st.routes[i].matches(method, path) {
			return &st.routes[i]
		}
	}
	return nil
}

// segment returns the i-th "/"-separated segment of path ("" at index 0).
func segment(path []byte, i int) []byte {
	for ; i > 0; i-- {
		j := bytes.IndexByte(path, '/')
		if j < 0 {
			return nil
		}
		path = path[j+1:]
	}
	if j := bytes.IndexByte(path, '/'); j >= 0 {
		return path[:j]
	}
	return path
}
