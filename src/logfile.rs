//! `logFile` with rotation (`logOptions`: `maxSize` MB, `maxBackups`, `maxAge` days, `compress`,
//! with Multus's defaults 100, 5, 5, true), safe while every CNI call of the node, each its own
//! process, logs to the same file at once.
//!
//! No rotating-log crate is safe for several processes (lumberjack, whose options these are,
//! says so; file-rotate keeps its own view of the backups and panics when another process
//! renamed one under it), so the scheme is this: every record is one `write` to a file opened
//! with `O_APPEND` (records never interleave), and rotation runs under an `flock` on
//! `<logFile>.lock`, where the process first checks that nobody rotated already. A process that
//! still holds the old file keeps appending to it (now `<logFile>.1`) until its next record
//! tells it to reopen, so no line is lost; that is also why the newest backup is compressed
//! only at the next rotation. gzip is flate2's.

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
            pending: Vec::new(),
        })
    }

    fn backup(&self, n: usize, gz: bool) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}{}", if gz { ".gz" } else { "" }));
        PathBuf::from(name)
    }

    /// Appends one whole record, rotating first when it would make the file too big.
    fn emit(&mut self, record: &[u8]) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        if size > 0 && size + record.len() as u64 > self.options.max_size {
            self.rotate(record.len() as u64)?;
        }
        self.file.write_all(record)
    }

    fn rotate(&mut self, incoming: u64) -> io::Result<()> {
        let mut lock_name = self.path.clone().into_os_string();
        lock_name.push(".lock");
        let lock = open_append(Path::new(&lock_name))?;
        let _held =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        let ours = self.file.metadata()?;
        match fs::metadata(&self.path) {
            // Another process rotated already: write to the new file.
            Ok(current) if current.ino() != ours.ino() || current.dev() != ours.dev() => {
                self.file = open_append(&self.path)?;
                return Ok(());
            }
            Ok(current) if current.len() + incoming <= self.options.max_size => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.file = open_append(&self.path)?;
                return Ok(());
            }
            _ => {}
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

    #[test]
    fn rotates_keeps_backups_and_compresses_all_but_the_newest() {
        let dir = std::env::temp_dir().join(format!("mh-logfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mh.log");
        let options = LogOptions {
            max_size: 100,
            max_backups: 3,
            max_age: None,
            compress: true,
        };
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
