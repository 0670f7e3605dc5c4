// A small net/http server that handoff can reload without dropping a connection.
//
// It takes its listening socket from systemd-style socket activation (what handoff does),
// sends READY=1 to $NOTIFY_SOCKET once it serves, and on SIGTERM stops accepting, finishes
// the requests in flight, closes idle keep-alive connections and exits 0. Standard library
// only (Go 1.19+), so it builds offline:
//
//	go build -o /tmp/go-server ./examples/go
//	handoff --listen 127.0.0.1:8080 -- /tmp/go-server
//
// Started without handoff (no LISTEN_FDS), it binds 127.0.0.1:8080 itself.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// listenFdsStart is the first inherited socket: fds 3, 4, ... (we use only the first one).
const listenFdsStart = 3

// inheritedListener returns the listener passed by handoff/systemd, or nil when started alone.
func inheritedListener() (net.Listener, error) {
	fds, ok := os.LookupEnv("LISTEN_FDS")
	if !ok {
		return nil, nil
	}
	// Like sd_listen_fds(): the fds are ours only if LISTEN_PID names this very process
	// (strict: a missing LISTEN_PID is an error too).
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID=%q is not our pid %d", pid, os.Getpid())
	}
	if n, err := strconv.Atoi(fds); err != nil || n < 1 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: no socket was passed", fds)
	}
	f := os.NewFile(listenFdsStart, "LISTEN_FD_3")
	// FileListener works on a dup of the fd (made non-blocking: old and new generations
	// share the socket during a reload, and a blocking accept() could hang when another
	// process takes the connection first); close our original.
	l, err := net.FileListener(f)
	f.Close()
	return l, err
}

// sdNotify sends one datagram to $NOTIFY_SOCKET, like sd_notify(3); a no-op when unset.
// A name starting with '@' is in the abstract namespace: Go's net package maps that '@'
// to the leading NUL byte itself, so the name is passed on unchanged.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	conn, err := net.Dial("unixgram", path)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

func main() {
	log.SetPrefix("go-server: ")
	log.SetFlags(0)
	gen := os.Getenv("HANDOFF_GENERATION")

	ln, err := inheritedListener()
	if err != nil {
		log.Fatal(err)
	}
	if ln == nil {
		log.Print("LISTEN_FDS is not set: binding 127.0.0.1:8080 myself")
		if ln, err = net.Listen("tcp", "127.0.0.1:8080"); err != nil {
			log.Fatal(err)
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from Go, generation %s (pid %d)\n", gen, os.Getpid())
	})
	// A request that takes a second: reload while it runs, it still completes.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second)
		fmt.Fprintf(w, "Slow hello from Go, generation %s (pid %d)\n", gen, os.Getpid())
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
	}

	// SIGTERM is handoff's stop signal; SIGINT is Ctrl-C when running alone.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// The socket is already listening: connections wait in its queue until Serve accepts
	// them, so we can say READY=1 right away.
	if err := sdNotify("READY=1\nSTATUS=serving, generation " + gen); err != nil {
		log.Fatalf("sd_notify: %v", err)
	}

	select {
	case err := <-served: // Serve failed before any stop signal
		log.Fatal(err)
	case <-ctx.Done():
	}
	// Shutdown closes the listener (our copy of it: the socket stays open in handoff and
	// in the next generation), closes idle connections, answers the requests in flight
	// with "Connection: close" and returns once they are done. handoff's --drain-timeout
	// bounds it from outside; this bounds it from inside.
	drainCtx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		log.Fatalf("drain: %v", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
