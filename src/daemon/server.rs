//! The daemon's socket: one thread per connection (a pod start holds one for a few
//! milliseconds), a bounded number of them, each request answered from the cache through
//! [`Served`], the daemon's [`Cluster`].

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;
use serde_json::Value;

use super::Daemon;
use super::reflector::read;
use crate::error::CniError;
use crate::k8s::socket::{Hello, PROTOCOL, Reply, Request, read_line, send_line};
use crate::k8s::{Cluster, NadReply, Patched, Pod};

/// Connections served at once; a caller beyond them finds the socket's backlog full or closed
/// and reads the API itself.
const CONNECTIONS: usize = 64;

/// The cluster as the daemon answers for it: pods and NADs from the watch cache, a pod or NAD
/// the watch has not delivered yet read live once (a pod start can race its own watch event),
/// writes on the daemon's own connection.
pub struct Served<'a>(pub &'a Daemon);

impl Cluster for Served<'_> {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(pod) = read(&self.0.pods).items.get(&key) {
            return Ok(Some(pod.clone()));
        }
        log::info!(
            "pod {namespace}/{name} is not in the cache (not delivered yet, or gone): reading it live"
        );
        self.0.metrics.cache_miss("pods");
        self.0.api.client().get_pod(namespace, name)
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<NadReply> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(nad) = read(&self.0.nads).items.get(&key) {
            return Ok(NadReply::Found(nad.clone()));
        }
        // Missing, or created an instant ago: the API server says which.
        self.0.metrics.cache_miss("network-attachment-definitions");
        self.0.api.client().get_nad(namespace, name)
    }

    fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<Patched> {
        self.0.api.client().patch_pod_status(namespace, name, patch)
    }

    fn create_event(&self, namespace: &str, event: &Value) -> Result<()> {
        self.0.api.client().create_event(namespace, event)
    }

    fn create_events(&self, namespace: &str, events: &[Value]) -> Vec<Result<()>> {
        self.0.api.client().create_events(namespace, events)
    }
}

/// Work in progress that SIGTERM waits for: open connections, events still being posted, a
/// hot-plug.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Of `count`, the open connections: only they are bounded (events are posted whatever
    /// the number of calls being answered).
    connections: AtomicUsize,
    /// SIGTERM came: no new connection is served.
    pub stopping: AtomicBool,
}

impl InFlight {
    /// How much is in progress.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// One piece of work in progress, for as long as the guard lives.
    pub fn busy(&self) -> Busy<'_> {
        self.guard(false)
    }

    /// One connection served, for as long as the guard lives.
    fn connection(&self) -> Busy<'_> {
        self.guard(true)
    }

    fn guard(&self, connection: bool) -> Busy<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        if connection {
            self.connections.fetch_add(1, Ordering::SeqCst);
        }
        Busy {
            in_flight: self,
            connection,
        }
    }
}

/// Counts one piece of work in progress while it lives.
pub struct Busy<'a> {
    in_flight: &'a InFlight,
    connection: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.in_flight.count.fetch_sub(1, Ordering::SeqCst);
        if self.connection {
            self.in_flight.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Accepts connections on `listener` until the daemon stops.
pub fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if daemon.in_flight.stopping.load(Ordering::SeqCst)
            || daemon.in_flight.connections.load(Ordering::SeqCst) >= CONNECTIONS
        {
            // Dropped unanswered: the caller reads the API itself.
            daemon.metrics.request("connect", false);
            continue;
        }
        let daemon = Arc::clone(&daemon);
        std::thread::spawn(move || {
            let _busy = daemon.in_flight.connection();
            if let Err(e) = connection(stream, &daemon) {
                log::debug!("socket connection: {e}");
            }
        });
    }
}

fn connection(stream: UnixStream, daemon: &Arc<Daemon>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    let Some(hello) = read_line::<Hello>(&mut reader)? else {
        return Ok(());
    };
    let ready = daemon.ready();
    send_line(
        &mut writer,
        &Hello {
            protocol: PROTOCOL,
            ready,
        },
    )?;
    // The reply may go unread (a report's sender does not wait): its failure does not matter.
    let _ = writer.flush();
    if hello.protocol != PROTOCOL {
        daemon.metrics.request("hello", false);
        return Ok(());
    }
    let served = Served(daemon);
    while let Some(request) = read_line::<Request>(&mut reader)? {
        let reply = match request {
            Request::Pod { namespace, name } => {
                reply(daemon, "pod", served.get_pod(&namespace, &name), Reply::Pod)
            }
            Request::Nads { keys } => {
                let replies: Vec<_> = served
                    .get_nads(&keys)
                    .into_iter()
                    .map(|r| r.map_err(|e| CniError::from_anyhow(&e)))
                    .collect();
                daemon
                    .metrics
                    .request("nads", replies.iter().all(|r| r.is_ok()));
                Reply::Nads(replies)
            }
            Request::PatchStatus {
                namespace,
                name,
                patch,
            } => reply(
                daemon,
                "patch_status",
                served.patch_pod_status(&namespace, &name, &patch),
                Reply::Patched,
            ),
            Request::Events { namespace, events } => {
                post_events(daemon, namespace, events);
                continue;
            }
            Request::Report(report) => {
                daemon.metrics.report(&report);
                daemon.metrics.request("report", true);
                continue;
            }
        };
        send_line(&mut writer, &reply)?;
        writer.flush()?;
    }
    Ok(())
}

fn reply<T>(daemon: &Daemon, op: &str, outcome: Result<T>, ok: fn(T) -> Reply) -> Reply {
    daemon.metrics.request(op, outcome.is_ok());
    match outcome {
        Ok(v) => ok(v),
        Err(e) => Reply::Failed(CniError::from_anyhow(&e)),
    }
}

/// Posts events after the caller has gone on: it did not wait for them, and SIGTERM does.
fn post_events(daemon: &Arc<Daemon>, namespace: String, events: Vec<Value>) {
    let daemon = Arc::clone(daemon);
    std::thread::spawn(move || {
        let _busy = daemon.in_flight.busy();
        let sent = Served(&daemon).create_events(&namespace, &events);
        let ok = sent.iter().all(Result::is_ok);
        for e in sent.into_iter().filter_map(Result::err) {
            log::warn!("event in {namespace}: {e:#}");
        }
        daemon.metrics.request("events", ok);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_count_against_the_connection_bound() {
        let in_flight = InFlight::default();
        let events = in_flight.busy();
        let call = in_flight.connection();
        assert_eq!(in_flight.count(), 2);
        assert_eq!(in_flight.connections.load(Ordering::SeqCst), 1);
        drop(call);
        assert_eq!(
            (
                in_flight.count(),
                in_flight.connections.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
        drop(events);
        assert_eq!(in_flight.count(), 0);
    }
}
