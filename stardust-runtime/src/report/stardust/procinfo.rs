//! Process metrics for the ping (`AppInfo`, [docs/stardust-protocol.md §4.1](crate::docs::stardust_protocol)), read from `/proc` on Linux.
//! Elsewhere only the fields the standard library can give are filled.
//!
//! The server binds the body strictly ([docs/stardust-protocol.md §6](crate::docs::stardust_protocol)):
//! a `null` in a number field fails the whole ping with HTTP 400, so a metric that is not
//! measured is left out (the server then stores 0), never sent as `null`; `UserName` and
//! `MachineName` are cut to their 50-unit columns (longer turns every ping into
//! `{code:500}`).

use std::time::Instant;

use serde::Serialize;

use super::COLUMN;
use crate::util::host::status_value;
use crate::util::text::cut_utf16;

/// The ping body. Field names as the .NET client writes them; `None` fields are left out.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AppInfo {
    pub id: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_name: Option<String>,
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Process start, Unix ms (the server takes a number as a Unix timestamp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    /// CPU time used, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor_time: Option<i64>,
    /// CPU time ÷ wall time since the previous sample (of one core, 4 decimals); finite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<f64>,
    /// Resident set, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Open file descriptors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handles: Option<i32>,
    /// Client Unix ms (server-corrected), echoed back by the server.
    pub time: i64,
}

/// Keeps the previous CPU reading, for the usage between two pings.
pub(crate) struct ProcSampler {
    last: Option<(Instant, i64)>,
    /// False: only what needs no `/proc` is sent (as on a system without it).
    metrics: bool,
}

/// When the runtime first started in this process: the process start sent where the system
/// does not say (better than none: the server would take every ping as a fresh start).
fn first_start_ms() -> i64 {
    static FIRST: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *FIRST.get_or_init(crate::clock::unix_ms_now)
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ; 100 on Linux's common ABIs).
const CLK_TCK: i64 = 100;

impl ProcSampler {
    /// `metrics: false` sends no process metrics (`Config::process_metrics`), as on a
    /// system without `/proc`.
    pub(crate) fn new(metrics: bool) -> ProcSampler {
        first_start_ms();
        let mut s = ProcSampler {
            last: None,
            metrics,
        };
        if let Some(cpu) = cpu_time_ms().filter(|_| metrics) {
            s.last = Some((Instant::now(), cpu));
        }
        s
    }

    pub(crate) fn sample(&mut self, version: Option<&str>, ips: &str, time: i64) -> AppInfo {
        if !self.metrics {
            return AppInfo {
                id: std::process::id(),
                name: crate::util::host::process_name(),
                version: version.map(str::to_owned),
                command_line: command_line(),
                user_name: user_name("").map(|n| cut_utf16(&n, COLUMN).to_owned()),
                machine_name: Some(cut_utf16(&crate::util::host::hostname(), COLUMN).to_owned()),
                ip: (!ips.is_empty()).then(|| ips.to_owned()),
                start_time: Some(first_start_ms()),
                time,
                ..AppInfo::default()
            };
        }
        let now = Instant::now();
        let cpu = cpu_time_ms();
        let cpu_usage = match (cpu, self.last) {
            (Some(c), Some((t, prev))) => {
                let wall = now.duration_since(t).as_millis() as f64;
                (wall > 0.0)
                    .then(|| (((c - prev) as f64 / wall) * 10_000.0).round() / 10_000.0)
                    .filter(|u| u.is_finite())
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
            version: version.map(str::to_owned),
            command_line: command_line(),
            user_name: user_name(&status).map(|n| cut_utf16(&n, COLUMN).to_owned()),
            machine_name: Some(cut_utf16(&crate::util::host::hostname(), COLUMN).to_owned()),
            ip: (!ips.is_empty()).then(|| ips.to_owned()),
            start_time: start_time_ms().or_else(|| Some(first_start_ms())),
            processor_time: cpu,
            cpu_usage,
            working_set: status_value(&status, "VmRSS:").map(|kb| kb * 1024),
            threads: status_value(&status, "Threads:").map(|n| n as i32),
            handles: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as i32),
            time,
        }
    }
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
        let mut s = ProcSampler::new(true);
        // Burn a little CPU so usage is measurable.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let info = s.sample(Some("1.0"), "10.0.0.1", 5);
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
        assert!(info.command_line.as_ref().unwrap().len() > 1);
        assert!(info.machine_name.is_some());
        assert!(info.user_name.is_some());
        let json = serde_json::to_value(&info).unwrap();
        assert!(json["WorkingSet"].is_i64() && json["IP"].is_string());
    }

    /// Without `/proc` (or with process metrics off) no number field is `null`: the server's
    /// model binding would refuse the whole ping with HTTP 400.
    #[test]
    fn no_field_is_ever_null() {
        let mut s = ProcSampler::new(false);
        let json = serde_json::to_value(s.sample(None, "", 5)).unwrap();
        let obj = json.as_object().unwrap();
        assert!(obj.values().all(|v| !v.is_null()), "{json}");
        for key in ["Id", "Name", "MachineName", "StartTime", "Time"] {
            assert!(obj.contains_key(key), "{key} missing: {json}");
        }
        for key in [
            "WorkingSet",
            "CpuUsage",
            "ProcessorTime",
            "Threads",
            "Handles",
            "Version",
        ] {
            assert!(!obj.contains_key(key), "{key} sent: {json}");
        }
        let json = serde_json::to_value(AppInfo::default()).unwrap();
        assert!(
            json.as_object().unwrap().values().all(|v| !v.is_null()),
            "{json}"
        );
    }
}
