package proxy

import (
	"strings"

	"github.com/podium-edge/podium/config"
	"github.com/valyala/fasthttp"
)

// directResponse is a route the edge answers itself (routes[].respond,
// Envoy's direct_response): its status and message, for writeError.
type directResponse struct {
	rt     *route
	status int
	msg    string
}

// directResponses compiles the respond routes of cfg; routes must be the
// state's compiled routes, one per cfg.Routes entry, in order, and must
// not move afterwards.
func directResponses(cfg *config.Edge, routes []route) []directResponse {
	var out []directResponse
	for i, r := range cfg.Routes {
		if rs := r.Respond; rs != nil {
			msg := rs.Message
			if msg == "" {
				msg = strings.ToLower(fasthttp.StatusMessage(rs.Status))
			}
			out = append(out, directResponse{rt: &routes[i], status: rs.Status, msg: msg})
		}
	}
	return out
}

// directResponse returns how the edge answers rt itself, or nil when rt
// forwards. A few pointer comparisons (the defaults have two respond
// routes), no lookup, on every routed request.
func (st *state) directResponse(rt *route) *directResponse {
	for i := range st.responds {
		if st.responds[i].rt == rt {
			return &st.responds[i]
		}
	}
	return nil
}
