// A net/http server that knows nothing about handoff: it binds its address itself
// (http.Server.ListenAndServe), and on SIGTERM stops accepting, finishes the requests in
// flight and exits 0. Under handoff, bind adoption gives it handoff's socket:
//
//	CGO_ENABLED=0 go build -o /tmp/go-unmodified ./examples/go-unmodified
//	handoff --listen 127.0.0.1:8080 --ready-after 1s -- /tmp/go-unmodified 127.0.0.1:8080
//
// The only handoff-specific thing is cosmetic: the response names $HANDOFF_GENERATION when
// it is set, so that a test can tell the generations apart.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	addr := "127.0.0.1:8080"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	gen := os.Getenv("HANDOFF_GENERATION")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from unmodified Go, generation %s (pid %d)\n", gen, os.Getpid())
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second)
		fmt.Fprintf(w, "Slow hello from unmodified Go, generation %s (pid %d)\n", gen, os.Getpid())
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe() }()
	select {
	case err := <-done:
		log.Fatalf("listen on %s: %v", addr, err)
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatalf("shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("serve: %v", err)
	}
}
