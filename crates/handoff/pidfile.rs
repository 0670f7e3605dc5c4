//! `--pid-file`: written atomically, removed at exit, and a second handoff refuses to start
//! on a pid file whose process is a live handoff.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A pid file checked but not yet written.
pub struct PidFile {
    path: PathBuf,
}

/// A pid file handoff wrote; removed on drop if it still holds our pid.
pub struct Written {
    path: PathBuf,
}

/// Whether `pid` is a running handoff (not merely a recycled pid).
fn is_live_handoff(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "handoff")
}

impl PidFile {
    pub fn check(path: &Path) -> Result<Self, String> {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(pid) = s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p != std::process::id())
            {
                if is_live_handoff(pid) {
                    return Err(format!(
                        "pid file {} belongs to a running handoff (pid {pid}); stop it first, or use another --pid-file",
                        path.display()
                    ));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Write our pid: to a temporary file in the same directory, then rename over.
    ///
    /// handoff may run as root in a directory others can write to. The temporary file is
    /// created with `O_CREAT|O_EXCL|O_NOFOLLOW`: if its name already exists (a crash's
    /// leftover, or a symlink planted to make root truncate another file), handoff stops
    /// with an error instead of following or removing it. Its mode is set on the open fd.
    pub fn write(self) -> Result<Written, String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!(
                    "cannot write pid file {}: its temporary file {} already exists (remove it if no handoff is starting)",
                    self.path.display(),
                    tmp.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot write pid file {}: cannot create {}: {e}",
                    self.path.display(),
                    tmp.display()
                ))
            }
        };
        // From here on the temporary file is ours: remove it on failure.
        let res = f
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "cannot write pid file {}: {e}",
                self.path.display()
            ));
        }
        Ok(Written { path: self.path })
    }
}

impl Written {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid file an earlier image of this process wrote (same pid: nothing to write).
    pub fn adopt(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
