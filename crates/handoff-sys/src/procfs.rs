//! Small /proc readers, used to attribute notify senders and to find leftovers.

/// The fields of /proc/PID/stat handoff uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie: exited, not yet collected by its parent), ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// Time spent in user and kernel mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
}

/// Parse /proc/PID/stat. The command name may contain spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parse the text of /proc/PID/stat (public so that tests read it the same way).
pub fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields from 3 (state) on; see proc(5).
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// Whether `pid` exists and has not exited (a zombie has exited: only its parent has not
/// collected it yet).
pub fn is_running(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Whether `pid` is `ancestor` or one of its descendants, or in the process group
/// `ancestor` leads.
pub fn belongs_to(pid: u32, ancestor: u32) -> bool {
    if pid == ancestor {
        return true;
    }
    let mut cur = pid;
    for _ in 0..64 {
        let Some(st) = stat(cur) else { return false };
        if st.pgrp == ancestor || st.ppid == ancestor {
            return true;
        }
        if st.ppid <= 1 {
            return false;
        }
        cur = st.ppid;
    }
    false
}

/// The descendants of `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?.ppid)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &all {
            if pp == parent && !out.contains(&p) && out.len() < 4096 {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// The value of `key` in `pid`'s initial environment (/proc/PID/environ).
pub fn environ_var(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// `pid`'s command name (/proc/PID/comm).
pub fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim_end()
            .to_string(),
    )
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let s = "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 0 0 0 0 15 3 0 0";
        assert_eq!(
            parse_stat(s),
            Some(Stat {
                state: 'S',
                ppid: 77,
                pgrp: 1234,
                utime: 15,
                stime: 3,
            })
        );
    }

    #[test]
    fn own_process_belongs_to_itself_and_parent() {
        let me = std::process::id();
        assert!(belongs_to(me, me));
        let st = stat(me).expect("own stat");
        assert!(belongs_to(me, st.ppid));
        assert!(!belongs_to(me, 999_999_999));
    }
}
