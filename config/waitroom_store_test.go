package config

import "testing"

// TestWaitingRoomStore loads the Consul store; the zero value is the
// state dir (the bad cases are in TestLoadFileBad).
func TestWaitingRoomStore(t *testing.T) {
	cfg, err := LoadFile("testdata/wr-store.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.WaitingRoomStore, (WaitingRoomStore{Consul: true, EdgeID: "edge-a", Prefix: "sales/waitroom"}); got != want {
		t.Errorf("waiting_room_store = %+v, want %+v", got, want)
	}
	if def := DefaultEdge(); def.WaitingRoomStore.Consul {
		t.Error("the default store is Consul, want the state dir")
	}
}
