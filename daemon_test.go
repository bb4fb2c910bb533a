package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestServeUntilDone: a port another process holds (kube-proxy's, while it still runs) is
// reported once and tried again until it is free, then served; the end of ctx stops it.
func TestServeUntilDone(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := taken.Addr().String()
	core, logs := observer.New(zap.DebugLevel)
	d := &daemon{log: zap.New(core)}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.serveUntilDone(ctx, "a test page", addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "served")
		}), 20*time.Millisecond)
	}()
	time.Sleep(100 * time.Millisecond) // several tries
	if n := logs.FilterMessage("cannot serve a test page; trying again").FilterLevelExact(zap.WarnLevel).Len(); n != 1 {
		t.Errorf("%d warnings while the port was taken, want 1 (the rest at debug)", n)
	}
	if logs.FilterMessage("cannot serve a test page; trying again").Len() < 2 {
		t.Error("no second try while the port was taken")
	}
	taken.Close()
	var body []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			continue
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		break
	}
	if string(body) != "served" {
		t.Errorf("after the port was freed: %q, want served", body)
	}
	if logs.FilterMessage("serving a test page now").Len() != 1 {
		t.Error("nothing said the page is served once the port was free")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("serveUntilDone did not return after ctx ended")
	}
}
