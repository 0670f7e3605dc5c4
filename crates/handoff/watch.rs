//! `--watch`: reload when files change. A file is watched through its directory, so that a
//! deploy replacing it by rename (the usual atomic way) is still seen. Bursts are debounced by
//! the state machine (`Event::FileChanged`).

use std::path::PathBuf;

use std::sync::Arc;

use tokio::sync::Notify;

/// The file watcher (kept alive) and its events.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
    /// Signalled on changes; any number of changes between two waits count once, so a burst
    /// costs no memory.
    pub changed: Arc<Notify>,
}

/// Start watching `paths` for `--watch`. A file is watched through its directory, so that a
/// deploy replacing it by rename (the usual atomic way) is still seen.
pub fn start(paths: &[PathBuf]) -> Result<Option<Watcher>, String> {
    use notify::{EventKind, RecursiveMode, Watcher as _};
    if paths.is_empty() {
        return Ok(None);
    }
    let files: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.is_dir())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let changed = Arc::new(Notify::new());
    let tx = changed.clone();
    let (f2, d2) = (files.clone(), dirs.clone());
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Reads (opening a config file, running a binary) are not changes.
        if matches!(
            ev.kind,
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
        ) || matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            let relevant = ev
                .paths
                .iter()
                .any(|p| f2.iter().any(|f| f == p) || d2.iter().any(|d| p.starts_with(d)));
            if relevant {
                tx.notify_one();
            }
        }
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    for d in &dirs {
        w.watch(d, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
    }
    for f in &files {
        let parent = f.parent().unwrap_or(std::path::Path::new("/"));
        w.watch(parent, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", f.display()))?;
    }
    Ok(Some(Watcher { _inner: w, changed }))
}
