//! CPU and memory of a process under test, read from /proc: the server's total CPU, its CPU per
//! thread (so a thread-per-core server shows the load of each shard), its resident memory and
//! its open file descriptors (a soak's leak check).
//! Parsing is separate from reading so it is tested on recorded stat lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The fields of a `/proc/PID/stat` or `/proc/PID/task/TID/stat` line that the sampler uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatLine {
    /// The command name between parentheses (a thread's name for a task).
    pub comm: String,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

/// A stat line that does not have the layout proc(5) documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatError {
    #[error("stat line has no `(comm)` field")]
    NoComm,
    #[error("stat line ends before field {field}")]
    MissingField { field: usize },
    #[error("stat field {field} is not a number: {value:?}")]
    NotNumber { field: usize, value: String },
}

impl StatLine {
    /// Parses a stat line. The command name may hold spaces and parentheses, so the fields are
    /// counted from the last `)`.
    pub fn parse(line: &str) -> Result<StatLine, StatError> {
        let open = line.find('(').ok_or(StatError::NoComm)?;
        let close = line.rfind(')').ok_or(StatError::NoComm)?;
        if close < open {
            return Err(StatError::NoComm);
        }
        let comm = line[open + 1..close].to_owned();
        // Field 3 (state) is the first after the comm; proc(5) numbers fields from 1.
        let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
        let field = |number: usize| -> Result<u64, StatError> {
            let value = rest
                .get(number - 3)
                .ok_or(StatError::MissingField { field: number })?;
            value.parse().map_err(|_| StatError::NotNumber {
                field: number,
                value: (*value).to_owned(),
            })
        };
        Ok(StatLine {
            comm,
            cpu_ticks: field(14)? + field(15)?,
            rss_pages: field(24)?,
        })
    }
}

/// One second (or so) of a process: CPU in percent of one core, per thread and in total.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    /// Whole process, percent of one core (200 = two cores busy).
    pub cpu_pct: f64,
    /// Per thread, labelled by thread name (`#2`, `#3`... tell apart equal names).
    pub threads: BTreeMap<String, f64>,
    pub rss_bytes: u64,
    /// Open file descriptors (`/proc/PID/fd` entries); absent in reports of older versions, or
    /// when the directory cannot be read (another user's process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_fds: Option<u64>,
}

struct Snapshot {
    at: Instant,
    process_ticks: u64,
    /// tid -> (label, ticks)
    threads: BTreeMap<u32, (String, u64)>,
}

/// Samples one process; each [`ProcSampler::sample`] reports the CPU used since the previous one.
pub struct ProcSampler {
    root: PathBuf,
    ticks_per_sec: f64,
    page_size: u64,
    last: Option<Snapshot>,
}

impl ProcSampler {
    /// A sampler of process `pid` (`None`: this process).
    pub fn new(pid: Option<u32>) -> ProcSampler {
        let root = match pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}")),
            None => PathBuf::from("/proc/self"),
        };
        // SAFETY: sysconf has no preconditions; it only reads system configuration.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        ProcSampler {
            root,
            ticks_per_sec: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            last: None,
        }
    }

    /// The process's resident memory now (e.g. a baseline before a load starts).
    pub fn rss_bytes(&self) -> Option<u64> {
        Some(read_stat(&self.root.join("stat"))?.rss_pages * self.page_size)
    }

    /// Reads the process now. The first call only sets the starting point and returns `None`;
    /// so does a call after the process went away.
    pub fn sample(&mut self) -> Option<ProcSample> {
        let now = Instant::now();
        let process = read_stat(&self.root.join("stat"))?;
        let threads = self.read_threads();
        let snapshot = Snapshot {
            at: now,
            process_ticks: process.cpu_ticks,
            threads,
        };
        let previous = self.last.replace(snapshot);
        let previous = previous?;
        let current = self.last.as_ref()?;
        let seconds = current.at.duration_since(previous.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let pct = |ticks: u64| ticks as f64 / self.ticks_per_sec / seconds * 100.0;
        let mut threads = BTreeMap::new();
        for (tid, (label, ticks)) in &current.threads {
            let before = previous.threads.get(tid).map(|(_, t)| *t).unwrap_or(0);
            threads.insert(label.clone(), pct(ticks.saturating_sub(before)));
        }
        Some(ProcSample {
            cpu_pct: pct(current.process_ticks.saturating_sub(previous.process_ticks)),
            threads,
            rss_bytes: process.rss_pages * self.page_size,
            open_fds: self.open_fds(),
        })
    }

    /// The process's open file descriptors now.
    pub fn open_fds(&self) -> Option<u64> {
        let dir = std::fs::read_dir(self.root.join("fd")).ok()?;
        Some(dir.count() as u64)
    }

    fn read_threads(&self) -> BTreeMap<u32, (String, u64)> {
        let mut stats: Vec<(u32, StatLine)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.root.join("task")) {
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(stat) = read_stat(&entry.path().join("stat")) {
                    stats.push((tid, stat));
                }
            }
        }
        // Equal names (glommio gives an executor's helper thread the executor's name) are told
        // apart by their order of creation: `name`, `name#2`, ... stable from run to run.
        stats.sort_by_key(|(tid, _)| *tid);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        stats
            .into_iter()
            .map(|(tid, stat)| {
                let count = seen.entry(stat.comm.clone()).or_default();
                *count += 1;
                let label = if *count == 1 {
                    stat.comm
                } else {
                    format!("{}#{count}", stat.comm)
                };
                (tid, (label, stat.cpu_ticks))
            })
            .collect()
    }
}

fn read_stat(path: &Path) -> Option<StatLine> {
    StatLine::parse(&std::fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A relay shard thread's line, as `cat /proc/<relay>/task/<tid>/stat` prints it.
    const SHARD_STAT: &str = "48213 (shard-0) S 48190 48190 1207 34816 48190 4194368 1893 0 0 0 \
        5123 2210 0 0 20 0 3 0 1180203 1219182592 5311 18446744073709551615 1 1 0 0 0 0 0 4096 \
        17610 0 0 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn counts_open_descriptors_of_another_process() {
        // stdin, stdout, stderr and the two the shell opens before it waits (Rust opens every
        // other descriptor close-on-exec, so the child inherits none of the test's).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exec 3</dev/null 4</dev/null; exec sleep 10"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh runs");
        let sampler = ProcSampler::new(Some(child.id()));
        let mut count = None;
        for _ in 0..100 {
            count = sampler.open_fds();
            if count == Some(5) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(count, Some(5));
        assert_eq!(
            sampler.open_fds(),
            None,
            "a process that is gone has no descriptors"
        );
    }

    #[test]
    fn parses_cpu_and_rss() {
        let stat = StatLine::parse(SHARD_STAT).unwrap();
        assert_eq!(stat.comm, "shard-0");
        assert_eq!(stat.cpu_ticks, 5123 + 2210);
        assert_eq!(stat.rss_pages, 5311);
    }

    #[test]
    fn comm_with_spaces_and_parentheses() {
        let line = SHARD_STAT.replace("(shard-0)", "(a (b) c)");
        let stat = StatLine::parse(&line).unwrap();
        assert_eq!(stat.comm, "a (b) c");
        assert_eq!(stat.cpu_ticks, 7333);
    }

    #[test]
    fn truncated_and_garbled_lines_are_errors() {
        assert_eq!(StatLine::parse("123 shard"), Err(StatError::NoComm));
        assert_eq!(
            StatLine::parse("1 (x) S 1 2 3"),
            Err(StatError::MissingField { field: 14 })
        );
        let garbled = SHARD_STAT.replace(" 5123 ", " 51x3 ");
        assert!(matches!(
            StatLine::parse(&garbled),
            Err(StatError::NotNumber { field: 14, .. })
        ));
    }

    #[test]
    fn samples_this_process() {
        let mut sampler = ProcSampler::new(None);
        assert!(sampler.sample().is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let sample = sampler.sample().unwrap();
        assert!(sample.rss_bytes > 0);
        assert!(!sample.threads.is_empty());
        assert!(sample.cpu_pct >= 0.0);
    }
}
