package origin

import (
	"bytes"
	"os"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The error schema that clients (and e2e's contract test) hold the API to
// admits the refusals the origin sends, codes included, and nothing else.
func TestErrorSchemaAdmitsTheErrorBodies(t *testing.T) {
	raw, err := os.ReadFile("schema/error.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("error.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("error.json")
	if err != nil {
		t.Fatal(err)
	}
	two := int64(2)
	for _, tt := range []struct {
		body []byte
		ok   bool
	}{
		{jsonBody(errorBody{Error: "sold out", RequestID: "r1", Remaining: &two}), true},
		{jsonBody(errorBody{Error: "limit per buyer: …", RequestID: "r1", Code: "limit_per_buyer"}), true},
		{[]byte(`{"error": "x", "request_id": "r1", "code": "something_else"}`), false},
		{[]byte(`{"error": "x", "request_id": "r1", "extra": 1}`), false},
	} {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(v); (err == nil) != tt.ok {
			t.Errorf("%s: valid %v, want %v (%v)", tt.body, err == nil, tt.ok, err)
		}
	}
}
