//! `--watch`: reload when what a path names changes. Bursts are debounced by the state
//! machine (`Event::FileChanged`).
//!
//! A path is watched *as given*, through every symlink on the way to what it names, because
//! that is how deploys change things:
//! - an editor or a deploy replaces a file by rename: its directory sees it;
//! - a Kubernetes ConfigMap volume swaps its `..data` symlink to a new timestamped directory
//!   and deletes the old one (the watched `app.yaml` is a symlink to `..data/app.yaml`);
//! - a Capistrano-style deploy flips `current -> releases/N`.
//!
//! So each path is resolved by hand, link by link; the directory holding each link, and the
//! directory of what it finally names, are watched. After any event the paths are resolved
//! again, the watches follow, and a file counts as changed only when what it names is another
//! file or was modified (inode, size, mtime): one reload per update, none for a read. A
//! directory counts as changed on any write below it. A file on a mount of its own (a
//! Kubernetes `subPath`) never sees its ConfigMap's updates: that gets a warning.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// The watcher thread's handle to the event loop.
pub struct Watcher {
    /// Signalled on changes; any number of changes between two waits count once, so a burst
    /// costs no memory.
    pub changed: Arc<Notify>,
}

/// What one `--watch` path names now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    /// What the path finally names (every symlink followed).
    target: PathBuf,
    /// Directories to watch: those holding each link on the way, and the target's own (or the
    /// target itself, recursively, for a directory).
    dirs: BTreeSet<PathBuf>,
    is_dir: bool,
    /// For a file: (device, inode, size, mtime): another file, or a modified one, differs.
    fingerprint: Option<(u64, u64, u64, i64, i64)>,
}

/// One step of a path being resolved.
enum Seg {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

/// The steps of `p`, last first (a stack).
fn segs(p: &Path) -> Vec<Seg> {
    p.components()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => Some(Seg::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Seg::Parent),
            Component::Normal(n) => Some(Seg::Name(n.to_os_string())),
        })
        .rev()
        .collect()
}

/// Resolve `path` link by link (at most 40 links, as the kernel allows).
fn resolve(path: &Path) -> Resolved {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut dirs = BTreeSet::new();
    // Components still to walk, last first.
    let mut pending: Vec<Seg> = segs(&abs);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c {
            Seg::Root => cur = PathBuf::from("/"),
            Seg::Parent => {
                cur.pop();
            }
            Seg::Name(name) => {
                let next = cur.join(&name);
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() && links < 40 => {
                        links += 1;
                        dirs.insert(cur.clone());
                        match std::fs::read_link(&next) {
                            Ok(to) => pending.extend(segs(&to)),
                            Err(_) => cur = next,
                        }
                    }
                    _ => cur = next,
                }
            }
        }
    }
    let meta = std::fs::metadata(&cur).ok();
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    if is_dir {
        dirs.insert(cur.clone());
    } else if let Some(p) = cur.parent() {
        dirs.insert(p.to_path_buf());
    }
    // The directory of the path as given, too: a file replaced by rename shows up there.
    if let Some(p) = abs.parent() {
        dirs.insert(p.to_path_buf());
    }
    let fingerprint = meta
        .filter(|m| !m.is_dir())
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
    Resolved {
        target: cur,
        dirs,
        is_dir,
        fingerprint,
    }
}

/// Whether `path` is a mount point of its own (a bind-mounted file: Kubernetes `subPath`).
fn is_own_mount(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // Field 5 is the mount point, with spaces and the like written as octal escapes.
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want) && !canon.is_dir())
}

/// Start watching `paths` for `--watch` on a thread of its own.
pub fn start(paths: &[PathBuf]) -> Result<Option<Watcher>, String> {
    if paths.is_empty() {
        return Ok(None);
    }
    for p in paths {
        if is_own_mount(p) {
            tracing::warn!(event = "watch_subpath", path = %p.display(), msg = "a watched file is a mount of its own (a Kubernetes subPath?): its updates never arrive",
                "{} is a mount of its own (a Kubernetes subPath?): updates of its ConfigMap or Secret never reach it; mount the volume as a directory and watch the file in it", p.display());
        }
    }
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut w = notify::recommended_watcher(tx).map_err(|e| format!("cannot watch files: {e}"))?;
    let mut state: Vec<(PathBuf, Resolved)> =
        paths.iter().map(|p| (p.clone(), resolve(p))).collect();
    let mut watched = BTreeSet::new();
    rewatch(&mut w, &mut watched, &state)?;
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    std::thread::Builder::new()
        .name("handoff-watch".into())
        .spawn(move || {
            // Keeps the watcher alive for as long as the thread runs (handoff's lifetime).
            while let Ok(first) = rx.recv() {
                let mut events = vec![first];
                events.extend(rx.try_iter());
                let mut fire = false;
                for (given, old) in state.iter_mut() {
                    let new = resolve(given);
                    fire |= if new.is_dir {
                        new.target != old.target
                            || events.iter().any(|e| writes_below(e, &new.target))
                    } else {
                        new.target != old.target || new.fingerprint != old.fingerprint
                    };
                    *old = new;
                }
                if let Err(e) = rewatch(&mut w, &mut watched, &state) {
                    tracing::warn!(event = "watch_error", error = %e, msg = "cannot watch a path", "{e}");
                }
                if fire {
                    notify.notify_one();
                }
            }
        })
        .map_err(|e| format!("cannot start the watch thread: {e}"))?;
    Ok(Some(Watcher { changed }))
}

/// Whether `e` writes something at or below `dir` (reads are not changes).
fn writes_below(e: &notify::Result<notify::Event>, dir: &Path) -> bool {
    let Ok(e) = e else { return true };
    let write = matches!(
        e.kind,
        EventKind::Access(notify::event::AccessKind::Close(
            notify::event::AccessMode::Write
        )) | EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
    );
    write && e.paths.iter().any(|p| p.starts_with(dir))
}

/// Make the watches match what the paths need now.
fn rewatch(
    w: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<(PathBuf, bool)>,
    state: &[(PathBuf, Resolved)],
) -> Result<(), String> {
    let mut want = BTreeSet::new();
    for (_, r) in state {
        for d in &r.dirs {
            let recursive = r.is_dir && *d == r.target;
            want.insert((d.clone(), recursive));
        }
    }
    for (d, rec) in watched.difference(&want).cloned().collect::<Vec<_>>() {
        let _ = w.unwatch(&d);
        watched.remove(&(d, rec));
    }
    for (d, rec) in want.difference(watched).cloned().collect::<Vec<_>>() {
        let mode = if rec {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        // A directory that is gone (the old target of a flipped link) is simply not watched.
        if d.is_dir() {
            w.watch(&d, mode)
                .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
            watched.insert((d, rec));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "handoff-watch-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_configmap_file_resolves_through_data_and_watches_the_volume_directory() {
        let d = tmp();
        std::fs::create_dir(d.join("..2024_1")).unwrap();
        std::fs::write(d.join("..2024_1/app.yaml"), "a").unwrap();
        symlink("..2024_1", d.join("..data")).unwrap();
        symlink("..data/app.yaml", d.join("app.yaml")).unwrap();
        let r = resolve(&d.join("app.yaml"));
        assert_eq!(r.target, d.join("..2024_1/app.yaml"));
        assert!(r.dirs.contains(&d), "{:?}", r.dirs);
        assert!(r.dirs.contains(&d.join("..2024_1")), "{:?}", r.dirs);
        // The swap: a new directory, ..data renamed over, the old one deleted.
        std::fs::create_dir(d.join("..2024_2")).unwrap();
        std::fs::write(d.join("..2024_2/app.yaml"), "b").unwrap();
        symlink("..2024_2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2024_1")).unwrap();
        let r2 = resolve(&d.join("app.yaml"));
        assert_eq!(r2.target, d.join("..2024_2/app.yaml"));
        assert_ne!(r.fingerprint, r2.fingerprint);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_flipped_current_link_is_seen_from_a_path_through_it() {
        let d = tmp();
        for n in ["1", "2"] {
            std::fs::create_dir_all(d.join("releases").join(n)).unwrap();
            std::fs::write(d.join("releases").join(n).join("config.yml"), n).unwrap();
        }
        symlink("releases/1", d.join("current")).unwrap();
        let given = d.join("current/config.yml");
        let r = resolve(&given);
        assert_eq!(r.target, d.join("releases/1/config.yml"));
        assert!(
            r.dirs.contains(&d),
            "the directory holding `current`: {:?}",
            r.dirs
        );
        symlink("releases/2", d.join("current.new")).unwrap();
        std::fs::rename(d.join("current.new"), d.join("current")).unwrap();
        assert_eq!(resolve(&given).target, d.join("releases/2/config.yml"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_plain_file_is_its_own_target_and_a_rewrite_changes_its_fingerprint() {
        let d = tmp();
        let f = d.join("c.toml");
        std::fs::write(&f, "a").unwrap();
        let r = resolve(&f);
        assert_eq!(r.target, f);
        assert_eq!(r.dirs, BTreeSet::from([d.clone()]));
        std::fs::write(d.join("c.toml.new"), "bb").unwrap();
        std::fs::rename(d.join("c.toml.new"), &f).unwrap();
        assert_ne!(resolve(&f).fingerprint, r.fingerprint);
        let _ = std::fs::remove_dir_all(&d);
    }
}
