//! CPU time and resident memory of a process, from `/proc` (Linux).

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU ticks of `pid` (`self` for this process).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU used by a group of processes since this clock was started (a process that ends meanwhile
/// counts up to its last reading: none, so its CPU is left out).
pub struct CpuClock {
    pids: Vec<(String, u64)>,
    at: Instant,
}

impl CpuClock {
    pub fn own() -> Option<CpuClock> {
        CpuClock::start(vec!["self".into()])
    }

    pub fn of(pid: u32) -> Option<CpuClock> {
        CpuClock::start(vec![pid.to_string()])
    }

    /// The processes `pids` together; `None` when none of them can be read.
    pub fn of_all(pids: &[u32]) -> Option<CpuClock> {
        CpuClock::start(pids.iter().map(u32::to_string).collect())
    }

    fn start(pids: Vec<String>) -> Option<CpuClock> {
        let pids: Vec<(String, u64)> =
            pids.into_iter().filter_map(|pid| cpu_ticks(&pid).map(|ticks| (pid, ticks))).collect();
        (!pids.is_empty()).then(|| CpuClock { pids, at: Instant::now() })
    }

    /// Average cores busy since the start (1.0 = one core all the time).
    pub fn cores(&self) -> f64 {
        let used: u64 =
            self.pids.iter().map(|(pid, start)| cpu_ticks(pid).map_or(0, |now| now.saturating_sub(*start))).sum();
        used as f64 / TICKS_PER_SEC / self.at.elapsed().as_secs_f64()
    }
}

/// `VmRSS` of `pid`, in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
