//! `--metrics ADDR`: Prometheus metrics at `/metrics`, in the OpenMetrics text format
//! (prometheus-client does the encoding).
//!
//! Counters and histograms follow the state machine's reports (telemetry, like the log);
//! gauges are set from its snapshot at each scrape. A scrape goes through the event loop
//! (the HTTP task asks, the driver answers), so every value of one scrape is of one instant.
//! Nothing of this exists when `--metrics` is not given.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handoff_core::supervisor::{Report, Snapshot, StartReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reloads: Family<ResultLabel, Counter>,
    restarts: Counter,
    generation: Gauge,
    generations: Family<StateLabel, Gauge>,
    ready_seconds: Histogram,
    drain_seconds: Histogram,
    last_success: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("handoff");
        let m = Self {
            reloads: Family::default(),
            restarts: Counter::default(),
            generation: Gauge::default(),
            generations: Family::default(),
            // 10 ms .. ~82 s: a child's start-up.
            ready_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 10 ms .. ~328 s: a drain, up to long drain timeouts.
            drain_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            last_success: Gauge::default(),
            registry: Registry::default(),
        };
        for result in ["ok", "failed"] {
            // Both series exist from the start, so that rate() and alerts see a 0.
            drop(m.reloads.get_or_create(&ResultLabel { result }));
        }
        registry.register(
            "reloads",
            "Reloads that ended, by result (ok, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "restarts",
            "Generations started to replace one that died on its own",
            m.restarts.clone(),
        );
        registry.register(
            "generation",
            "Number of the serving generation (0 when none serves)",
            m.generation.clone(),
        );
        registry.register(
            "generations",
            "Live generations by state",
            m.generations.clone(),
        );
        registry.register(
            "ready_seconds",
            "Time from a generation's start to READY=1",
            m.ready_seconds.clone(),
        );
        registry.register(
            "drain_seconds",
            "Time from a generation's stop signal to its exit",
            m.drain_seconds.clone(),
        );
        registry.register(
            "last_reload_success_timestamp_seconds",
            "Unix time of the last reload that succeeded",
            m.last_success.clone(),
        );
        Self { registry, ..m }
    }
}

/// The counters `handoff upgrade` carries across exec (the histograms start empty in the
/// new image).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    reloads_ok: u64,
    reloads_failed: u64,
    restarts: u64,
    last_success: f64,
}

impl Metrics {
    pub fn export(&self) -> Counters {
        let reloads = |result| self.reloads.get_or_create(&ResultLabel { result }).get();
        Counters {
            reloads_ok: reloads("ok"),
            reloads_failed: reloads("failed"),
            restarts: self.restarts.get(),
            last_success: self.last_success.get(),
        }
    }

    /// Fresh metrics with the counters of an earlier image.
    pub fn import(c: &Counters) -> Self {
        let m = Self::default();
        let reloads = |result| m.reloads.get_or_create(&ResultLabel { result });
        reloads("ok").inc_by(c.reloads_ok);
        reloads("failed").inc_by(c.reloads_failed);
        m.restarts.inc_by(c.restarts);
        m.last_success.set(c.last_success);
        m
    }

    /// Count what a report says.
    pub fn observe(&self, r: &Report) {
        match r {
            Report::Spawned {
                reason: StartReason::Restart,
                ..
            } => {
                self.restarts.inc();
            }
            Report::Ready { after, .. } => self.ready_seconds.observe(after.as_secs_f64()),
            Report::Drained { after, .. } => self.drain_seconds.observe(after.as_secs_f64()),
            Report::ReloadFinished(o) => {
                let result = if o.ok() { "ok" } else { "failed" };
                self.reloads.get_or_create(&ResultLabel { result }).inc();
                if o.ok() {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or(Duration::ZERO);
                    self.last_success.set(now.as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// The text for one scrape.
    pub fn render(&self, snap: &Snapshot) -> String {
        self.generation
            .set(snap.serving.map_or(0, |(g, _)| g as i64));
        for state in ["starting", "serving", "draining", "killing"] {
            let n = snap
                .generations
                .iter()
                .filter(|g| match g.phase.name() {
                    "spawning" => state == "starting",
                    s => s == state,
                })
                .count();
            self.generations
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A scrape on its way to the event loop, with where to send the text.
pub type Scrape = oneshot::Sender<String>;

/// Most scrapes served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 8;

/// Serve `GET /metrics` on `listener` forever; each scrape is answered by the event loop.
pub async fn serve(listener: std::net::TcpListener, tx: mpsc::Sender<Scrape>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and friends: the connection stays queued; do not spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, tx)).await;
        });
    }
}

async fn answer(mut s: tokio::net::TcpStream, tx: mpsc::Sender<Scrape>) -> std::io::Result<()> {
    // The request head, bounded: nothing but the first line matters.
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path != "/metrics" && !path.starts_with("/metrics?") {
        ("404 Not Found", "text/plain", "see /metrics\n".to_string())
    } else {
        let (otx, orx) = oneshot::channel();
        let _ = tx.send(otx).await;
        match orx.await {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => ("503 Service Unavailable", "text/plain", "exiting\n".into()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
