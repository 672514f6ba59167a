//! The node daemon's unix socket: its versioned protocol, and the CNI call's side of it.
//!
//! A connection opens with a hello each way: the caller's protocol version, then the daemon's
//! version and whether its cache is synced. Then one JSON line per request and per reply. The
//! call asks, never waits: a daemon that is absent, not ready, of another protocol, or slower
//! than [`DaemonSocket::wait`], is left alone for the rest of the call, and the call reads the
//! API itself as it would without a daemon ([`Asked`]). Events and the call's figures are told,
//! not asked: nothing waits for their answer.

use std::cell::{Cell, OnceCell, RefCell};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, NadReply, Patched, Pod};
use super::cluster::Cluster;
use crate::error::CniError;

/// The protocol this build speaks.
pub const PROTOCOL: u32 = 1;

/// Where the daemon listens unless `daemonSocket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/multihome/daemon.sock";

/// How long a call waits for the daemon's hello and for an answer from its cache, unless
/// `daemonTimeout` says otherwise: an answer from memory takes well under a millisecond, so
/// this only bounds what a stuck daemon can cost a pod start.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(100);

/// The daemon's socket, as a call is configured to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// How long an answer may take (the hello, a read); writes made for the call (the status
    /// patch) may take as long as the API call would.
    pub wait: Duration,
}

/// The first line each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol the sender speaks.
    pub protocol: u32,
    /// The daemon's: its cache is synced (a caller's hello leaves it out).
    #[serde(default)]
    pub ready: bool,
}

/// A request, one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The pod, from the cache (fetched live when the watch has not delivered it yet).
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// NetworkAttachmentDefinitions, `(namespace, name)`, answered in order.
    Nads {
        /// Which.
        keys: Vec<(String, String)>,
    },
    /// A merge patch of the pod's status, made by the daemon on its open connection.
    PatchStatus {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// The patch.
        patch: Value,
    },
    /// Events to create; told, not asked.
    Events {
        /// Their namespace.
        namespace: String,
        /// The events.
        events: Vec<Value>,
    },
    /// How one CNI call went; told, not asked.
    Report(Report),
}

/// A reply, one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To [`Request::Pod`].
    Pod(Option<Pod>),
    /// To [`Request::Nads`], in order.
    Nads(Vec<std::result::Result<NadReply, CniError>>),
    /// To [`Request::PatchStatus`].
    Patched(Patched),
    /// The request failed in the daemon (an API error): the call fails as it would have.
    Failed(CniError),
}

/// How one CNI call went, for the daemon's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `ADD`, `DEL`, ...
    pub command: String,
    /// The CNI error code; `None` on success.
    pub code: Option<u32>,
    /// How long the call took.
    pub seconds: f64,
    /// Why the call read the API itself, when it had meant to ask the daemon.
    pub unused: Option<Unused>,
    /// Each plugin call it made.
    #[serde(default)]
    pub delegates: Vec<DelegateCall>,
    /// The longest it waited for one answer of the daemon (its hello or a read from its
    /// cache), in seconds; `None` when it did not ask. How close calls come to `daemonTimeout`.
    #[serde(default)]
    pub daemon_wait: Option<f64>,
}

/// How long one plugin call of a CNI call took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegateCall {
    /// The network (`namespace/name` of a NAD, or a config's name).
    pub network: String,
    /// The plugin's type.
    pub plugin: String,
    /// `ADD`, `DEL`, ...
    pub command: String,
    /// How long it took.
    pub seconds: f64,
    /// It succeeded.
    pub ok: bool,
}

/// What one call saw of the daemon, for its report.
#[derive(Debug, Default)]
pub struct Seen {
    /// Why the call did not (or stopped to) ask the daemon.
    pub unused: Cell<Option<Unused>>,
    /// The longest the call waited for one answer (hello or read); `None`: it never asked.
    pub longest: Cell<Option<Duration>>,
}

impl Seen {
    /// Runs `ask`, counting how long it waited.
    pub fn timed<T>(&self, ask: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let answer = ask();
        let waited = start.elapsed();
        if self.longest.get().is_none_or(|l| waited > l) {
            self.longest.set(Some(waited));
        }
        answer
    }
}

/// Why a call did not (or stopped to) ask the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unused {
    /// No socket: no daemon on this node, or it is stopping.
    Absent,
    /// A socket nobody listens on: the daemon died.
    Refused,
    /// It did not answer in time.
    Timeout,
    /// Its cache is not synced yet.
    Unready,
    /// It speaks another protocol (an upgrade in progress).
    Protocol,
    /// The connection failed or an answer made no sense.
    Broken,
}

impl Unused {
    /// Its name, as logs and metrics give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unused::Absent => "absent",
            Unused::Refused => "refused",
            Unused::Timeout => "timeout",
            Unused::Unready => "unready",
            Unused::Protocol => "protocol",
            Unused::Broken => "broken",
        }
    }

    fn of(e: &std::io::Error) -> Unused {
        match e.kind() {
            ErrorKind::NotFound => Unused::Absent,
            ErrorKind::ConnectionRefused => Unused::Refused,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Unused::Timeout,
            _ => Unused::Broken,
        }
    }
}

/// Writes `value` as one line.
pub fn send_line(stream: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Reads one line as a `T`; `None` at the end of the stream.
pub fn read_line<T: serde::de::DeserializeOwned>(
    stream: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    if stream.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// An open connection to a ready daemon of this protocol.
pub struct Link {
    reader: BufReader<UnixStream>,
}

impl Link {
    /// Connects and exchanges hellos within `socket.wait`.
    pub fn open(socket: &DaemonSocket) -> std::result::Result<Link, Unused> {
        let stream = UnixStream::connect(&socket.path).map_err(|e| Unused::of(&e))?;
        let mut link = Link {
            reader: BufReader::new(stream),
        };
        link.timeout(socket.wait).map_err(|e| Unused::of(&e))?;
        let hello = Hello {
            protocol: PROTOCOL,
            ready: false,
        };
        send_line(link.reader.get_mut(), &hello).map_err(|e| Unused::of(&e))?;
        match read_line::<Hello>(&mut link.reader) {
            Ok(Some(h)) if h.protocol != PROTOCOL => Err(Unused::Protocol),
            Ok(Some(h)) if !h.ready => Err(Unused::Unready),
            Ok(Some(_)) => Ok(link),
            Ok(None) => Err(Unused::Broken),
            Err(e) => Err(Unused::of(&e)),
        }
    }

    fn timeout(&self, wait: Duration) -> std::io::Result<()> {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(wait))
    }

    /// Sends `request` and waits up to `wait` for its reply.
    pub fn ask(&mut self, request: &Request, wait: Duration) -> std::result::Result<Reply, Unused> {
        self.timeout(wait).map_err(|e| Unused::of(&e))?;
        send_line(self.reader.get_mut(), request).map_err(|e| Unused::of(&e))?;
        match read_line(&mut self.reader) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(Unused::Broken),
            Err(e) => Err(Unused::of(&e)),
        }
    }

    /// Sends `request` without waiting for anything back.
    pub fn tell(&mut self, request: &Request) -> std::result::Result<(), Unused> {
        send_line(self.reader.get_mut(), request).map_err(|e| Unused::of(&e))
    }
}

/// Tells the daemon at `path`, if one listens there, how a call went: connect, hello and the
/// report, without reading anything back (a daemon that is stuck costs the call one write
/// timeout of `wait` at most).
pub fn report(path: &Path, wait: Duration, report: Report) {
    let Ok(mut stream) = UnixStream::connect(path) else {
        return;
    };
    if stream.set_write_timeout(Some(wait)).is_err() {
        return;
    }
    let hello = Hello {
        protocol: PROTOCOL,
        ready: false,
    };
    let sent = send_line(&mut stream, &hello)
        .and_then(|()| send_line(&mut stream, &Request::Report(report)));
    if let Err(e) = sent {
        log::debug!("report to the daemon at {}: {e}", path.display());
    }
}

/// The cluster as a CNI call sees it with a daemon: pods and NADs from the daemon's cache, the
/// status patch made on its connection, events handed to it. When the daemon fails the call
/// (see [`Unused`]), the rest of the call goes to the API itself through `direct`.
pub struct Asked<'a> {
    link: RefCell<Option<Link>>,
    socket: &'a DaemonSocket,
    /// How long the daemon may take over the status patch: as long as the API call may.
    write_wait: Duration,
    direct: Box<dyn Fn() -> Result<Option<Client>> + 'a>,
    api: OnceCell<Client>,
    /// What the call saw of the daemon, for its report.
    seen: &'a Seen,
}

impl<'a> Asked<'a> {
    /// Asks the daemon over `link`; `direct` connects to the API should the daemon fail.
    pub fn new(
        link: Link,
        socket: &'a DaemonSocket,
        write_wait: Duration,
        seen: &'a Seen,
        direct: Box<dyn Fn() -> Result<Option<Client>> + 'a>,
    ) -> Asked<'a> {
        Asked {
            link: RefCell::new(Some(link)),
            socket,
            write_wait,
            direct,
            api: OnceCell::new(),
            seen,
        }
    }

    /// The daemon's answer from its cache to `request`, within the socket's wait.
    fn read(&self, request: &Request) -> Option<Reply> {
        self.seen.timed(|| self.ask(request, self.socket.wait))
    }

    /// The daemon's reply to `request`, or `None` once it has failed this call.
    fn ask(&self, request: &Request, wait: Duration) -> Option<Reply> {
        let mut link = self.link.borrow_mut();
        let reply = link.as_mut()?.ask(request, wait);
        reply.map_err(|why| self.give_up(&mut link, why)).ok()
    }

    /// Hands `request` to the daemon; `false` once it has failed this call.
    fn tell(&self, request: &Request) -> bool {
        let mut link = self.link.borrow_mut();
        let Some(l) = link.as_mut() else {
            return false;
        };
        l.tell(request)
            .map_err(|why| self.give_up(&mut link, why))
            .is_ok()
    }

    fn give_up(&self, link: &mut Option<Link>, why: Unused) {
        log::info!(
            "the daemon at {} failed this call ({}): asking the API server directly",
            self.socket.path.display(),
            why.as_str()
        );
        *link = None;
        self.seen.unused.set(Some(why));
    }

    /// The API, connected on first use.
    fn api(&self) -> Result<&Client> {
        if let Some(client) = self.api.get() {
            return Ok(client);
        }
        let client = (self.direct)()?.ok_or_else(|| {
            anyhow::anyhow!("the daemon failed and no API server is configured to ask instead")
        })?;
        Ok(self.api.get_or_init(|| client))
    }
}

/// `n` answers of a batch that failed as a whole, each saying why.
fn every_one_fails<T>(n: usize, e: &anyhow::Error) -> Vec<Result<T>> {
    (0..n).map(|_| Err(anyhow::anyhow!("{e:#}"))).collect()
}

/// A reply that is not the one asked for.
fn unexpected(reply: Reply) -> anyhow::Error {
    match reply {
        Reply::Failed(e) => e.into(),
        other => anyhow::anyhow!("the daemon answered out of turn: {other:?}"),
    }
}

impl Cluster for Asked<'_> {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        let request = Request::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match self.read(&request) {
            Some(Reply::Pod(pod)) => Ok(pod),
            Some(other) => Err(unexpected(other)),
            None => self.api()?.get_pod(namespace, name),
        }
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        let keys = [(namespace.to_string(), name.to_string())];
        self.get_nads(&keys)
            .pop()
            .unwrap_or_else(|| Err(anyhow::anyhow!("the daemon answered no NAD")))
    }

    fn get_nads(&self, keys: &[(String, String)]) -> Vec<Result<NadReply>> {
        let request = Request::Nads {
            keys: keys.to_vec(),
        };
        match self.read(&request) {
            Some(Reply::Nads(replies)) if replies.len() == keys.len() => replies
                .into_iter()
                .map(|r| r.map_err(anyhow::Error::from))
                .collect(),
            Some(other) => {
                let e = unexpected(other);
                every_one_fails(keys.len(), &e)
            }
            None => match self.api() {
                Ok(api) => api.get_nads(keys),
                Err(e) => every_one_fails(keys.len(), &e),
            },
        }
    }

    fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched> {
        let request = Request::PatchStatus {
            namespace: namespace.to_string(),
            name: name.to_string(),
            patch: patch.clone(),
        };
        match self.ask(&request, self.write_wait) {
            Some(Reply::Patched(p)) => Ok(p),
            Some(other) => Err(unexpected(other)),
            // A merge patch made twice is made once: the daemon may have sent it before it
            // failed.
            None => self.api()?.patch_pod_status(namespace, name, patch),
        }
    }

    fn create_event(&self, namespace: &str, event: &Value) -> Result<()> {
        self.create_events(namespace, std::slice::from_ref(event))
            .pop()
            .unwrap_or(Ok(()))
    }

    fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        let request = Request::Events {
            namespace: namespace.to_string(),
            events: events.to_vec(),
        };
        if self.tell(&request) {
            return events.iter().map(|_| Ok(())).collect();
        }
        match self.api() {
            Ok(api) => api.create_events(namespace, events),
            Err(e) => every_one_fails(events.len(), &e),
        }
    }
}
