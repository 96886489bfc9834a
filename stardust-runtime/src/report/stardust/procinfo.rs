//! Process metrics for the ping (`AppInfo`, [docs/stardust-protocol.md §4.1](crate::docs::stardust_protocol)), read from `/proc` on Linux.
//! Elsewhere only the fields the standard library can give are filled.

use std::time::Instant;

use serde::Serialize;

/// The ping body. Field names as the .NET client writes them.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AppInfo {
    pub id: u32,
    pub name: String,
    pub version: String,
    pub command_line: Option<String>,
    pub user_name: Option<String>,
    pub machine_name: Option<String>,
    #[serde(rename = "IP")]
    pub ip: Option<String>,
    /// Process start, Unix ms (the server takes a number as a Unix timestamp).
    pub start_time: Option<i64>,
    /// CPU time used, ms.
    pub processor_time: Option<i64>,
    /// CPU time ÷ wall time since the previous sample (fraction, 4 decimals).
    pub cpu_usage: Option<f64>,
    /// Resident set, bytes.
    pub working_set: Option<i64>,
    pub threads: Option<i32>,
    /// Open file descriptors.
    pub handles: Option<i32>,
    /// Client Unix ms (server-corrected), echoed back by the server.
    pub time: i64,
}

/// Keeps the previous CPU reading, for the usage between two pings.
pub(crate) struct ProcSampler {
    last: Option<(Instant, i64)>,
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on Linux's common ABIs).
const CLK_TCK: i64 = 100;

impl ProcSampler {
    pub(crate) fn new() -> ProcSampler {
        let mut s = ProcSampler { last: None };
        if let Some(cpu) = cpu_time_ms() {
            s.last = Some((Instant::now(), cpu));
        }
        s
    }

    pub(crate) fn sample(&mut self, version: &str, ips: &str, time: i64) -> AppInfo {
        let now = Instant::now();
        let cpu = cpu_time_ms();
        let cpu_usage = match (cpu, self.last) {
            (Some(c), Some((t, prev))) => {
                let wall = now.duration_since(t).as_millis() as f64;
                (wall > 0.0).then(|| (((c - prev) as f64 / wall) * 10_000.0).round() / 10_000.0)
            }
            _ => None,
        };
        if let Some(c) = cpu {
            self.last = Some((now, c));
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        AppInfo {
            id: std::process::id(),
            name: crate::util::host::process_name(),
            version: version.to_owned(),
            command_line: command_line(),
            user_name: user_name(&status),
            machine_name: Some(crate::util::host::hostname()),
            ip: (!ips.is_empty()).then(|| ips.to_owned()),
            start_time: start_time_ms(),
            processor_time: cpu,
            cpu_usage,
            working_set: status_kb(&status, "VmRSS:").map(|kb| kb * 1024),
            threads: status_kb(&status, "Threads:").map(|n| n as i32),
            handles: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as i32),
            time,
        }
    }
}

fn status_kb(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Fields of `/proc/self/stat` after the `(comm)` field, which may contain spaces.
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn cpu_time_ms() -> Option<i64> {
    let f = stat_fields()?;
    // After `(comm)`: state is index 0, utime is field 14 overall → index 11, stime → 12.
    let utime: i64 = f.get(11)?.parse().ok()?;
    let stime: i64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000 / CLK_TCK)
}

fn start_time_ms() -> Option<i64> {
    let f = stat_fields()?;
    let ticks: i64 = f.get(19)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime * 1000 + ticks * 1000 / CLK_TCK)
}

fn command_line() -> Option<String> {
    match std::fs::read("/proc/self/cmdline") {
        Ok(raw) if !raw.is_empty() => Some(
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => {
            let args: Vec<String> = std::env::args().collect();
            (!args.is_empty()).then(|| args.join(" "))
        }
    }
}

fn user_name(status: &str) -> Option<String> {
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned);
    if let (Some(uid), Ok(passwd)) = (uid, std::fs::read_to_string("/etc/passwd")) {
        for line in passwd.lines() {
            let mut parts = line.split(':');
            let (Some(name), _, Some(id)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if id == uid {
                return Some(name.to_owned());
            }
        }
    }
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn linux_metrics_are_real() {
        let mut s = ProcSampler::new();
        // Burn a little CPU so usage is measurable.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let info = s.sample("1.0", "10.0.0.1", 5);
        assert_eq!(info.id, std::process::id());
        assert!(info.working_set.unwrap() > 1024 * 1024);
        assert!(info.threads.unwrap() >= 1);
        assert!(info.handles.unwrap() >= 3);
        assert!(info.processor_time.unwrap() >= 0);
        assert!(info.cpu_usage.is_some());
        let start = info.start_time.unwrap();
        let now = crate::clock::local_unix_ms(crate::clock::now());
        assert!(
            start <= now + 1000 && start > now - 86_400_000 * 365,
            "{start} vs {now}"
        );
        assert!(info.command_line.unwrap().len() > 1);
        assert!(info.machine_name.is_some());
        assert!(info.user_name.is_some());
        let json = serde_json::to_value(AppInfo::default()).unwrap();
        assert!(json.get("WorkingSet").is_some() && json.get("IP").is_some());
    }
}
