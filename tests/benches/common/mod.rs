//! What the gateway benchmarks share: full or smoke run, medians and percentiles, the machine
//! and process CPU figures printed beside the results.

#![allow(dead_code)]

use anyhow::Context as _;
use std::time::Duration;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not (a smoke run).
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A positive integer from the environment, if set.
pub fn env_number(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) => {
            let v = v.to_string_lossy();
            v.trim()
                .parse()
                .map(Some)
                .with_context(|| format!("{name}={v:?} is not a number"))
        }
    }
}

/// The median (the mean of the two middle values for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (s.get(n / 2 - 1).copied().unwrap_or(0.0) + s.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest rank; 0 for none.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`
/// (clock ticks of 10 ms); `None` when it cannot be read (not Linux, process gone).
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the line; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    const TICKS_PER_SEC: u64 = 100;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// CPU time used by a set of processes between two readings.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    start: Vec<Option<Duration>>,
}

impl CpuMeter {
    /// Starts measuring `pids` (`None`: this process).
    pub fn start(pids: &[Option<u32>]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| process_cpu(*p)).collect(),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`] (NaN when unknown).
    pub fn stop(&self) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| match (start, process_cpu(*pid)) {
                (Some(a), Some(b)) => b.saturating_sub(*a).as_secs_f64(),
                _ => f64::NAN,
            })
            .collect()
    }
}
