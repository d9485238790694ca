//! The side file of a run: for each criterion group, what it measured (subject, leaf size, number
//! of leaves, which floor group it is compared with) and the memory of its tree; plus the machine.
//! `benches/report.py` joins these with criterion's `estimates.json` files.
//!
//! Files go to `<criterion output>/tdp-meta/<group>.json`, where the criterion output is found as
//! criterion finds it: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the workspace's
//! `target/criterion`.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Criterion's output directory for this workspace.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("criterion")
}

/// Whether this process measures: false in criterion's `--test`, `--list` and `--profile-time`
/// modes, which write no estimates.
pub fn measuring() -> bool {
    !std::env::args().any(|a| {
        a == "--test" || a == "--list" || a == "--profile-time" || a.starts_with("--profile-time=")
    })
}

/// A flat JSON object, built field by field.
#[derive(Clone, Debug, Default)]
pub struct Record {
    fields: Vec<(String, String)>,
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Record {
    /// An empty record.
    pub fn new() -> Record {
        Record::default()
    }

    /// Adds a string field.
    pub fn str(mut self, key: &str, value: &str) -> Record {
        self.fields.push((key.into(), quote(value)));
        self
    }

    /// Adds a number field.
    pub fn num(mut self, key: &str, value: u64) -> Record {
        self.fields.push((key.into(), value.to_string()));
        self
    }

    /// Adds a field that may be absent (`null`).
    pub fn opt(mut self, key: &str, value: Option<u64>) -> Record {
        let v = value.map_or_else(|| "null".to_string(), |v| v.to_string());
        self.fields.push((key.into(), v));
        self
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("  {}: {v}", quote(k)))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    /// Writes the record as `<criterion output>/tdp-meta/<name>.json`, unless the process runs
    /// in one of criterion's modes that measure nothing ([`measuring`]), so that the side files
    /// always describe the last run that produced estimates.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn write(&self, name: &str) -> std::io::Result<()> {
        if !measuring() {
            return Ok(());
        }
        let dir = criterion_dir().join("tdp-meta");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.json")), self.to_json())
    }
}

fn cpuinfo(info: &str, key: &str) -> String {
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine and the code measured: CPU model, family/model/stepping, clock and cache (from
/// `/proc/cpuinfo`), the number of CPUs this process may use, the compiler, and the commit of the
/// workspace (with `+dirty` when it has uncommitted changes).
pub fn machine() -> Record {
    machine_fields(Record::new().str("kind", "machine"))
}

/// The record of one bench file's run, `name`, with the same fields as [`machine`]: written by a
/// bench file other than `benches/explicit.rs`, whose [`machine`] record marks older results as
/// stale, so that each file's results are judged against its own run.
pub fn run(name: &str) -> Record {
    machine_fields(Record::new().str("kind", "run").str("run", name))
}

fn machine_fields(record: Record) -> Record {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut commit = command_line("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
    if !command_line("git", &["-C", root, "status", "--porcelain"]).is_empty() {
        commit.push_str("+dirty");
    }
    record
        .str("cpu", &cpuinfo(&info, "model name"))
        .str(
            "cpu_id",
            &format!(
                "family {} model {} stepping {}",
                cpuinfo(&info, "cpu family"),
                cpuinfo(&info, "model"),
                cpuinfo(&info, "stepping")
            ),
        )
        .str("mhz", &cpuinfo(&info, "cpu MHz"))
        .str("cache", &cpuinfo(&info, "cache size"))
        .num("cpus", cpus)
        .str("os", std::env::consts::OS)
        .str("arch", std::env::consts::ARCH)
        .str("rustc", &command_line("rustc", &["-V"]))
        .str("commit", &commit)
}
