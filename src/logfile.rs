//! `logFile` with rotation (`logOptions`: `maxSize` MB, `maxBackups`, `maxAge` days, `compress`,
//! with Multus's defaults 100, 5, 5, true), safe while every CNI call of the node, each its own
//! process, logs to the same file at once.
//!
//! No rotating-log crate is safe for several processes (lumberjack, whose options these are,
//! says so; file-rotate keeps its own view of the backups and panics when another process
//! renamed one under it), so the scheme is this: every record is one `write` to a file opened
//! with `O_APPEND` (records never interleave), under a shared `flock` on `<logFile>.lock`, and
//! rotation runs under the exclusive one, where the process first checks that nobody rotated
//! already. Before each record a writer compares the file it holds with the one `logFile` names
//! and reopens when they differ, so every line goes to the file that is `logFile` when it is
//! written: a reader following it (`tail -F`, a log shipper) sees every line, and no newer line
//! sits in an older backup. The newest backup is still compressed only at the next rotation, so
//! a compression never races a writer that has not looked yet. gzip is flate2's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value};

use crate::error::{Code, coded};

/// Rotation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// Rotate before the file passes this many bytes.
    pub max_size: u64,
    /// Backups kept (`<logFile>.1` newest).
    pub max_backups: usize,
    /// Backups older than this are removed (`None`: kept whatever their age).
    pub max_age: Option<Duration>,
    /// gzip the backups (all but the newest).
    pub compress: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_size: 100 << 20,
            max_backups: 5,
            max_age: Some(Duration::from_secs(5 * 86_400)),
            compress: true,
        }
    }
}

impl LogOptions {
    /// Reads Multus's `logOptions`; a value of the wrong type is an error naming the key.
    pub fn parse(options: &Map<String, Value>) -> Result<LogOptions> {
        let mut o = LogOptions::default();
        let bad = |key: &str, what: &str| {
            coded(
                Code::InvalidConfig,
                format!("multihome config \"logOptions\".{key:?} must be {what}"),
            )
        };
        for (key, value) in options {
            match key.as_str() {
                // Megabytes, as Multus; a fraction is allowed (tests, tiny nodes).
                "maxSize" => {
                    let mb = value
                        .as_f64()
                        .filter(|m| *m > 0.0 && m.is_finite())
                        .ok_or_else(|| bad(key, "a positive number of megabytes"))?;
                    o.max_size = (mb * 1_048_576.0) as u64;
                }
                "maxBackups" => {
                    o.max_backups = value
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(key, "a non-negative integer"))?;
                }
                "maxAge" => {
                    let days = value.as_u64().ok_or_else(|| bad(key, "a number of days"))?;
                    o.max_age = (days > 0).then(|| Duration::from_secs(days * 86_400));
                }
                "compress" => {
                    o.compress = value.as_bool().ok_or_else(|| bad(key, "true or false"))?
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// A log file shared by every multihome process of the node.
pub struct LogFile {
    path: PathBuf,
    options: LogOptions,
    file: File,
    /// `<logFile>.lock`, opened at the first record.
    lock: Option<File>,
    /// Bytes of a record not yet ended by a newline.
    pending: Vec<u8>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    /// Opens (creates) `path` for appending.
    pub fn open(path: &Path, options: LogOptions) -> Result<LogFile> {
        let file =
            open_append(path).with_context(|| format!("opening logFile {}", path.display()))?;
        Ok(LogFile {
            path: path.to_path_buf(),
            options,
            file,
            lock: None,
            pending: Vec::new(),
        })
    }

    fn backup(&self, n: usize, gz: bool) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}{}", if gz { ".gz" } else { "" }));
        PathBuf::from(name)
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Appends one whole record to the file that is `logFile` now, rotating first when it
    /// would make that file too big.
    fn emit(&mut self, record: &[u8]) -> io::Result<()> {
        let lock = match self.lock.take() {
            Some(lock) => lock,
            None => open_append(&self.lock_path())?,
        };
        // Shared: writers do not wait for each other, only for a rotation.
        let held = Flock::lock(lock, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))?;
        let written = self.emit_locked(&held, record);
        self.lock = Some(held.unlock().map_err(|(_, e)| io::Error::from(e))?);
        written
    }

    fn emit_locked(&mut self, held: &Flock<File>, record: &[u8]) -> io::Result<()> {
        self.follow()?;
        let size = self.file.metadata()?.len();
        if size > 0 && size + record.len() as u64 > self.options.max_size {
            held.relock(FlockArg::LockExclusive)
                .map_err(io::Error::from)?;
            // Taking the exclusive lock let go of the shared one: another writer may have
            // rotated meanwhile.
            self.follow()?;
            self.rotate(record.len() as u64)?;
        }
        self.file.write_all(record)
    }

    /// Reopens `logFile` when the file held is no longer the one the path names (another
    /// process rotated it, or it was removed).
    fn follow(&mut self) -> io::Result<()> {
        let ours = self.file.metadata()?;
        let current = match fs::metadata(&self.path) {
            Ok(current) => current,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.file = open_append(&self.path)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if current.ino() != ours.ino() || current.dev() != ours.dev() {
            self.file = open_append(&self.path)?;
        }
        Ok(())
    }

    /// Moves the current file to the first backup, under the exclusive lock, unless the file
    /// (after `follow`) has room for `incoming` bytes.
    fn rotate(&mut self, incoming: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        if size == 0 || size + incoming <= self.options.max_size {
            return Ok(());
        }
        if self.options.max_backups == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for gz in [false, true] {
                let _ = fs::remove_file(self.backup(self.options.max_backups, gz));
            }
            for n in (1..self.options.max_backups).rev() {
                for gz in [false, true] {
                    let from = self.backup(n, gz);
                    if from.exists() {
                        fs::rename(&from, self.backup(n + 1, gz))?;
                    }
                }
            }
            fs::rename(&self.path, self.backup(1, false))?;
        }
        self.file = open_append(&self.path)?;
        // `.1` may still be written to by a process that opened it before; `.2` no longer is.
        if self.options.compress && self.options.max_backups >= 2 {
            let plain = self.backup(2, false);
            if plain.exists() {
                gzip(&plain, &self.backup(2, true))?;
            }
        }
        if let Some(age) = self.options.max_age {
            let now = SystemTime::now();
            for n in 1..=self.options.max_backups {
                for gz in [false, true] {
                    let b = self.backup(n, gz);
                    let old = fs::metadata(&b)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age));
                    if old {
                        let _ = fs::remove_file(&b);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Compresses `from` into `to` (written aside, then renamed) and removes `from`.
fn gzip(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut encoder = flate2::write::GzEncoder::new(
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?,
        flate2::Compression::default(),
    );
    io::copy(&mut File::open(from)?, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    fs::rename(&tmp, to)?;
    fs::remove_file(from)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
            let records: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&records)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn options_default_to_multus_and_name_a_bad_key() {
        assert_eq!(
            LogOptions::parse(&Map::new()).unwrap(),
            LogOptions::default()
        );
        let o = LogOptions::parse(
            json!({"maxSize": 1, "maxBackups": 2, "maxAge": 0, "compress": false})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (o.max_size, o.max_backups, o.max_age, o.compress),
            (1 << 20, 2, None, false)
        );
        for bad in [
            json!({"maxSize": "big"}),
            json!({"maxBackups": -1}),
            json!({"compress": "yes"}),
        ] {
            let e = crate::error::CniError::from_anyhow(
                &LogOptions::parse(bad.as_object().unwrap()).unwrap_err(),
            );
            assert!(e.msg.contains("logOptions") && e.code == 7, "{}", e.msg);
        }
    }

    /// A fresh directory for `mh.log`, and options that rotate it every 100 bytes.
    fn scratch(tag: &str, compress: bool) -> (PathBuf, PathBuf, LogOptions) {
        let dir = std::env::temp_dir().join(format!("mh-logfile-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let options = LogOptions {
            max_size: 100,
            max_backups: 3,
            max_age: None,
            compress,
        };
        (dir.join("mh.log"), dir, options)
    }

    /// Two processes' handles: the one that opened the file before the other rotated it still
    /// writes to the file that is `logFile` now, never to the backup.
    #[test]
    fn a_line_goes_to_the_current_file_after_another_handle_rotated() {
        let (path, dir, options) = scratch("stale", false);
        let mut early = LogFile::open(&path, options.clone()).unwrap();
        let mut late = LogFile::open(&path, options).unwrap();
        for i in 0..4 {
            writeln!(late, "late {i} {}", "x".repeat(30)).unwrap();
        }
        assert!(dir.join("mh.log.1").exists(), "the late handle rotated");
        writeln!(early, "early line").unwrap();
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("early line\n"), "{current:?}");
        let backup = fs::read_to_string(dir.join("mh.log.1")).unwrap();
        assert!(!backup.contains("early"), "{backup:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_keeps_backups_and_compresses_all_but_the_newest() {
        let (path, dir, options) = scratch("rotate", true);
        let mut log = LogFile::open(&path, options).unwrap();
        for i in 0..20 {
            write!(log, "line {i:02} ").unwrap();
            writeln!(log, "{}", "x".repeat(30)).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "mh.log",
                "mh.log.1",
                "mh.log.2.gz",
                "mh.log.3.gz",
                "mh.log.lock"
            ]
        );
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        let mut text = String::new();
        io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(File::open(dir.join("mh.log.3.gz")).unwrap()),
            &mut text,
        )
        .unwrap();
        assert!(
            text.lines()
                .all(|l| l.starts_with("line ") && l.ends_with(&"x".repeat(30))),
            "{text}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
