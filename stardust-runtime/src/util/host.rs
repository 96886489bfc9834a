//! Facts about this process and host used in the report header (and, later, in pings).

use std::net::Ipv4Addr;

/// Local IPv4 addresses of this host, loopback and link-local (169.254/16) excluded, in the
/// order the kernel lists them. Read from `/proc/net/fib_trie` on Linux; empty elsewhere.
pub(crate) fn local_ipv4s() -> Vec<Ipv4Addr> {
    let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") else {
        return Vec::new();
    };
    parse_fib_trie(&text)
}

/// The first number of the `key` line (e.g. `VmRSS:`) of a `/proc/<pid>/status` text.
pub(crate) fn status_value(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// This process's resident set, kB (`None` without `/proc`).
pub(crate) fn rss_kb() -> Option<i64> {
    status_value(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

pub(crate) fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.parse().ok();
        } else if t.contains("host LOCAL") {
            if let Some(ip) = last.take() {
                if !ip.is_loopback()
                    && !ip.is_link_local()
                    && !ip.is_unspecified()
                    && !out.contains(&ip)
                {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// The address used in `ClientId` (`<ip>@<pid>`): the first local IPv4, else 127.0.0.1.
pub(crate) fn primary_ipv4() -> Ipv4Addr {
    local_ipv4s()
        .first()
        .copied()
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The executable's file name (without extension), the default application id.
pub(crate) fn process_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rust-app".to_owned())
}

/// The host name: the kernel's (or `/etc/hostname`), else `$HOSTNAME`/`$COMPUTERNAME`, else
/// `localhost`. The one host-name function of the runtime (Stardust's `MachineName`,
/// SkyWalking's instance name and properties).
pub(crate) fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie_local_hosts_without_loopback() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.2.255\n        /32 link BROADCAST\n     |-- 169.254.1.1\n        /32 host LOCAL\nLocal:\n     |-- 10.1.2.3\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(text), vec![Ipv4Addr::new(10, 1, 2, 3)]);
        assert!(!process_name().is_empty());
    }
}
