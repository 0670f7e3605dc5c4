//! A small axum (tokio + hyper) server that handoff can reload without dropping a connection.
//!
//!     cargo build --example axum-server
//!     handoff --listen 127.0.0.1:8080 -- target/debug/examples/axum-server
//!
//! - It takes its listener with the `listenfd` crate. listenfd accepts the fds when
//!   `LISTEN_PID` is *missing* (for `systemfd --no-pid`), so we check `LISTEN_PID` ourselves
//!   first, strictly, as `sd_listen_fds()` does. Without `LISTEN_FDS` it binds 127.0.0.1:8080.
//! - It sends `READY=1` with the `sd-notify` crate once it serves.
//! - On SIGTERM (handoff's stop signal) or SIGINT it stops accepting, closes idle keep-alive
//!   connections, lets the requests in flight finish (their responses say
//!   `connection: close`) and exits 0.
//!
//! The axum `Router` is served by hyper's HTTP/1 connections directly rather than with
//! `axum::serve(..).with_graceful_shutdown(..)`, because of connections accepted just before
//! the stop signal whose request has not been read yet: axum's shutdown cancels them while
//! it is still detecting HTTP/1 or 2, and hyper's own graceful shutdown closes a connection
//! on which nothing was received yet. Either way that client gets its connection closed
//! unanswered, and under load during a reload it happens (tests/integration/examples.rs saw
//! it). So each connection first waits for its request to arrive (at most 5 s, as Go's
//! net/http does), and is told to shut down only once hyper has read it.
use std::net::TcpListener;
use std::pin::pin;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The listener passed by handoff/systemd, or `None` when started alone.
fn inherited_listener() -> Result<Option<TcpListener>, String> {
    let Some(fds) = std::env::var_os("LISTEN_FDS") else {
        return Ok(None);
    };
    // Strict, like sd_listen_fds(): the fds are ours only if LISTEN_PID names this process.
    let pid = std::env::var("LISTEN_PID").unwrap_or_default();
    if pid != std::process::id().to_string() {
        return Err(format!(
            "LISTEN_PID={pid:?} is not our pid {}",
            std::process::id()
        ));
    }
    // Reads LISTEN_FDS/LISTEN_FDS_FIRST_FD and removes the variables from our environment
    // (so call it before any other thread exists), and checks that fd 3 is a TCP listener.
    match listenfd::ListenFd::from_env().take_tcp_listener(0) {
        Ok(Some(listener)) => Ok(Some(listener)),
        Ok(None) => Err(format!("LISTEN_FDS={fds:?}: no socket was passed")),
        Err(e) => Err(format!("fd 3: {e}")),
    }
}

/// Handles SIGTERM and SIGINT from now on; the future resolves on the first of them.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Serves one connection. Once `stop` turns true, the request in flight (if any) is
/// answered with `connection: close` and the connection is closed. `stop` is dropped when
/// the connection is done: the drain counts on that.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    // A client that connected just before the stop signal has sent its request, or is about
    // to: wait until its first bytes are there (at most 5 s) before the stop signal is
    // looked at. peek() leaves them for hyper; readable() alone can wake up spuriously.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.peek(&mut [0; 1])).await;
    let conn = http1::Builder::new()
        // Bounds how long a connection that sends nothing can hold up a drain.
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = pin!(conn);
    tokio::select! {
        biased; // poll the connection first: hyper reads the request that is waiting
        _ = conn.as_mut() => return, // done, or the client went away: not our error
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

fn main() {
    let fail = |msg: String| -> ! {
        eprintln!("axum-server: {msg}");
        std::process::exit(1)
    };
    let listener = match inherited_listener() {
        Ok(Some(listener)) => listener,
        Ok(None) => {
            eprintln!("axum-server: LISTEN_FDS is not set: binding 127.0.0.1:8080 myself");
            TcpListener::bind("127.0.0.1:8080").unwrap_or_else(|e| fail(e.to_string()))
        }
        Err(msg) => fail(msg),
    };
    // tokio needs a non-blocking socket; the flag is shared with every process holding the
    // socket, which is what the generations overlapping during a reload need anyway.
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| fail(e.to_string()));

    // One thread is plenty for an example (and needs no extra tokio feature).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e.to_string()));
    runtime.block_on(async {
        let generation = std::env::var("HANDOFF_GENERATION").unwrap_or_else(|_| "?".into());
        let who = format!("generation {generation} (pid {})", std::process::id());
        let hello = format!("Hello from Rust (axum), {who}\n");
        let slow = format!("Slow hello from Rust (axum), {who}\n");
        let app = Router::new()
            .route("/", get(move || async move { hello }))
            .route(
                "/slow",
                // A request that takes a second: reload while it runs, it still completes.
                get(move || async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    slow
                }),
            );
        let listener =
            tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| fail(e.to_string()));

        // Before READY=1: from then on handoff may send SIGTERM at any time.
        let stop = stop_signal().unwrap_or_else(|e| fail(e.to_string()));
        // The socket is already listening: connections wait in its queue until we accept
        // them, so we can say READY=1 now. A no-op without NOTIFY_SOCKET.
        let status = format!("serving, generation {generation}");
        let ready = [
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ];
        if let Err(e) = sd_notify::notify(false, &ready) {
            fail(format!("sd_notify: {e}"));
        }

        // Every connection holds a receiver; stop_tx.closed() resolves once all are dropped.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut stop = pin!(stop);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. out of fds: wait instead of spinning.
                        eprintln!("axum-server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            tokio::spawn(serve_connection(stream, app.clone(), stop_rx.clone()));
        }
        // Stop accepting: close our copy of the listening socket (handoff and the next
        // generation keep theirs). Then let every connection finish its request in flight,
        // closing idle ones at once. handoff's --drain-timeout bounds the wait from outside.
        drop(listener);
        drop(stop_rx);
        stop_tx.send_replace(true);
        stop_tx.closed().await;
    });
}
