//! The spool: a bounded, append-only local file of request events (one JSON object a line) that
//! keeps them while the database is unreachable. The log writer appends in order and replays from
//! the oldest; once everything is replayed the file is truncated. A file left by a crashed process
//! is replayed by the next one that opens it (rows are inserted idempotently, so a replay that
//! was cut short never writes a row twice).
//!
//! Plain blocking file I/O: appends and reads are small, hit the page cache and happen only while
//! the database is down; `fsync` runs on shutdown and at most once a second while appending.
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{RequestEvent, Tokens};
use crate::telemetry::metrics as m;

/// Replicas that share a data directory (several app instances in one process, in tests) each
/// take the first spool file no live process holds; a crashed process's file is free again and
/// is replayed by whoever takes its slot next.
const SLOTS: usize = 16;
const SYNC_EVERY: Duration = Duration::from_secs(1);

pub struct Spool {
    path: PathBuf,
    /// Read + append, and holds an exclusive advisory lock for the life of the spool.
    file: File,
    /// Bytes in the file: replayed records stay until the whole file is replayed.
    len: u64,
    /// Offset of the oldest record the database has not acknowledged.
    head: u64,
    max_bytes: u64,
    /// Inside a spool-full episode (one WARN each); ends when the file is truncated.
    full: bool,
    dropped_in_episode: u64,
    dirty: bool,
    last_sync: Instant,
}

/// Where a `peek` ended: `ack` it once the database has those records.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl Spool {
    /// Opens (creating with mode 0600) a spool file in `dir`; one left by a previous process is
    /// kept for replay, minus a torn last line.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        for slot in 0..SLOTS {
            let name = match slot {
                0 => "requests.ndjson".to_string(),
                n => format!("requests-{n}.ndjson"),
            };
            let path = dir.join(name);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            // `mode` applies only on creation; a file restored from elsewhere may be wider.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let len = complete_len(&file)?;
            if len < file.metadata()?.len() {
                file.set_len(len)?;
                tracing::warn!(path = %path.display(), "spool ended in a torn record; dropped it");
            }
            let s = Self {
                path,
                file,
                len,
                head: 0,
                max_bytes,
                full: false,
                dropped_in_episode: 0,
                dirty: false,
                last_sync: Instant::now(),
            };
            s.gauge();
            if len > 0 {
                tracing::info!(path = %s.path.display(), bytes = len, "replaying request events spooled by a previous run");
            }
            return Ok(s);
        }
        Err(io::Error::other(format!(
            "all {SLOTS} spool files in {} are held by other processes",
            dir.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No record waits for the database.
    pub fn is_empty(&self) -> bool {
        self.head >= self.len
    }

    /// Size of the file.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Appends events in order; those that would take the file over its bound are dropped and
    /// counted. Returns how many were kept.
    pub fn append(&mut self, events: &[RequestEvent]) -> usize {
        let mut buf = Vec::with_capacity(events.len() * 512);
        let mut kept = 0;
        let mut dropped = 0u64;
        for ev in events {
            let start = buf.len();
            if serde_json::to_writer(&mut buf, ev).is_err() {
                buf.truncate(start);
                dropped += 1;
                continue;
            }
            buf.push(b'\n');
            if self.len + buf.len() as u64 > self.max_bytes {
                buf.truncate(start);
                dropped += 1;
                continue;
            }
            kept += 1;
        }
        if dropped > 0 {
            self.note_full(dropped);
        }
        if buf.is_empty() {
            return 0;
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A partial write would glue the next record to a torn one: cut back to the last
            // whole record.
            let _ = self.file.set_len(self.len);
            metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "spool_error")
                .increment(kept as u64);
            tracing::error!(error = %e, path = %self.path.display(), events = kept, "cannot write to the request spool; events dropped");
            return 0;
        }
        self.len += buf.len() as u64;
        self.dirty = true;
        self.gauge();
        if self.last_sync.elapsed() >= SYNC_EVERY {
            let _ = self.sync();
        }
        kept
    }

    fn note_full(&mut self, dropped: u64) {
        metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "spool_full")
            .increment(dropped);
        self.dropped_in_episode += dropped;
        if !self.full {
            self.full = true;
            tracing::warn!(path = %self.path.display(), max_bytes = self.max_bytes, "request spool is full: new request events are dropped until it is replayed");
        }
    }

    /// Reads up to `max` records from the oldest unacknowledged one, in order. Unreadable lines
    /// are skipped (and counted): they would otherwise block the spool for ever.
    pub fn peek(&self, max: usize) -> io::Result<(Vec<RequestEvent>, Mark)> {
        let mut events = Vec::new();
        let mut end = self.head;
        let mut size = 64 * 1024usize;
        let mut buf = Vec::new();
        while events.len() < max && end < self.len {
            let want = size.min((self.len - end) as usize);
            buf.resize(want, 0);
            self.file.read_exact_at(&mut buf, end)?;
            let mut consumed = 0;
            for line in buf.split_inclusive(|b| *b == b'\n') {
                if events.len() >= max || line.last() != Some(&b'\n') {
                    break;
                }
                consumed += line.len();
                match decode(&line[..line.len() - 1]) {
                    Ok(ev) => events.push(ev),
                    Err(e) => {
                        metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "spool_corrupt")
                            .increment(1);
                        tracing::warn!(error = %e, path = %self.path.display(), offset = end, "unreadable record in the request spool; skipped");
                    }
                }
            }
            if consumed == 0 {
                if end + want as u64 >= self.len {
                    // No newline up to the end: cannot happen after `open` cut a torn tail, but
                    // never spin on it.
                    end = self.len;
                    break;
                }
                // One record longer than the buffer.
                size *= 2;
                continue;
            }
            end += consumed as u64;
        }
        Ok((events, Mark(end)))
    }

    /// The database has the records up to `mark`: move past them, and truncate the file once
    /// everything is replayed (appends made since the `peek` are kept).
    pub fn ack(&mut self, mark: Mark) -> io::Result<()> {
        self.head = mark.0.max(self.head);
        if self.head >= self.len {
            self.file.set_len(0)?;
            self.len = 0;
            self.head = 0;
            self.dirty = true;
            if self.full {
                tracing::info!(
                    dropped = self.dropped_in_episode,
                    "request spool replayed; it takes new events again"
                );
            }
            self.full = false;
            self.dropped_in_episode = 0;
            self.gauge();
        }
        Ok(())
    }

    /// Flushes the file to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn gauge(&self) {
        metrics::gauge!(m::LOG_SPOOL_BYTES).set(self.len as f64);
    }
}

/// Length of the file up to and including its last newline: a crash in the middle of an append
/// leaves a torn record after it.
fn complete_len(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 8192];
    while end > 0 {
        let n = buf.len().min(end as usize);
        let start = end - n as u64;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// `RequestEvent` as read back. Its format names are `&'static str`, which serde can only
/// borrow from `'static` input; this owned twin maps them back to the known names. Building the
/// event field by field makes a field added to `RequestEvent` a compile error here, and
/// `deny_unknown_fields` makes the round-trip test fail if the two drift apart.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spooled {
    id: uuid::Uuid,
    ts: DateTime<Utc>,
    service: String,
    access_key_id: Option<i64>,
    upstream_key_id: Option<i64>,
    #[serde(default)]
    tried: Vec<i64>,
    model: Option<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    path: String,
    status: u16,
    attempts: u32,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    tokens: Tokens,
    #[serde(default)]
    cost_micros: Option<i64>,
    error_kind: Option<String>,
    streamed: bool,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    estimated: bool,
    client_format: String,
    upstream_format: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    bodies: Option<Box<super::capture::Bodies>>,
}

fn decode(line: &[u8]) -> serde_json::Result<RequestEvent> {
    let s: Spooled = serde_json::from_slice(line)?;
    Ok(RequestEvent {
        id: s.id,
        ts: s.ts,
        service: s.service,
        access_key_id: s.access_key_id,
        upstream_key_id: s.upstream_key_id,
        tried: s.tried,
        model: s.model,
        upstream_model: s.upstream_model,
        path: s.path,
        status: s.status,
        attempts: s.attempts,
        latency_ms: s.latency_ms,
        ttft_ms: s.ttft_ms,
        tokens: s.tokens,
        cost_micros: s.cost_micros,
        error_kind: s.error_kind,
        streamed: s.streamed,
        cancelled: s.cancelled,
        estimated: s.estimated,
        client_format: format_name(&s.client_format),
        upstream_format: format_name(&s.upstream_format),
        target: s.target,
        bodies: s.bodies,
    })
}

/// The wire format names events carry (a closed set in the proxy).
fn format_name(s: &str) -> &'static str {
    crate::snapshot::Kind::ALL
        .into_iter()
        .find(|k| *k == s)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> RequestEvent {
        RequestEvent {
            id: uuid::Uuid::now_v7(),
            ts: Utc::now(),
            service: format!("svc-{n}"),
            access_key_id: Some(1),
            upstream_key_id: Some(2),
            tried: vec![2, 3],
            model: Some("m".into()),
            upstream_model: Some("um".into()),
            path: "v1/chat/completions".into(),
            status: 200,
            attempts: 1,
            latency_ms: n,
            ttft_ms: Some(3),
            tokens: Tokens {
                prompt: 3,
                completion: 1,
                cache_read: 4,
                cache_write: 5,
            },
            cost_micros: Some(7),
            error_kind: None,
            streamed: true,
            cancelled: true,
            estimated: true,
            client_format: "anthropic",
            upstream_format: "gemini",
            target: Some("cheap".into()),
            bodies: None,
        }
    }

    fn drain(s: &mut Spool) -> Vec<RequestEvent> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            if s.is_empty() {
                break;
            }
            let (evs, mark) = s.peek(3).unwrap();
            out.extend(evs);
            s.ack(mark).unwrap();
        }
        out
    }

    #[test]
    fn round_trips_every_field() {
        let ev = event(9);
        let line = serde_json::to_vec(&ev).unwrap();
        let back = decode(&line).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&ev).unwrap()
        );
    }

    #[test]
    fn replays_in_append_order_and_truncates_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let evs: Vec<_> = (0..10).map(event).collect();
        assert_eq!(s.append(&evs[..4]), 4);
        assert_eq!(s.append(&evs[4..]), 6);
        // An unacknowledged chunk is read again.
        let (first, _) = s.peek(3).unwrap();
        assert_eq!(first.len(), 3);
        let (again, _) = s.peek(3).unwrap();
        assert_eq!(again[0].id, first[0].id);
        let out = drain(&mut s);
        let ids: Vec<_> = out.iter().map(|e| e.latency_ms).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(std::fs::metadata(s.path()).unwrap().len(), 0);
    }

    #[test]
    fn drops_what_goes_over_the_bound_and_takes_events_again_once_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let mut s = Spool::open(dir.path(), one * 3 + one / 2).unwrap();
        let evs: Vec<_> = (0..5).map(event).collect();
        assert_eq!(s.append(&evs), 3);
        assert_eq!(s.append(&evs[..1]), 0);
        assert!(s.bytes() <= one * 3 + one / 2);
        let out = drain(&mut s);
        assert_eq!(
            out.iter().map(|e| e.latency_ms).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(s.append(&evs[3..]), 2);
    }

    #[test]
    fn a_spool_left_by_a_previous_process_is_replayed_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<_> = (0..5).map(event).collect();
        let path = {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            s.append(&evs);
            // Acknowledged but not fully replayed: the next process replays it all again
            // (the inserts are idempotent).
            let (_, mark) = s.peek(2).unwrap();
            s.ack(mark).unwrap();
            s.sync().unwrap();
            s.path().to_path_buf()
        };
        // A crash in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":\"torn").unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.path(), path);
        let out = drain(&mut s);
        assert_eq!(
            out.iter().map(|e| e.latency_ms).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn two_spools_in_one_directory_take_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Spool::open(dir.path(), 1 << 20).unwrap();
        let b = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_ne!(a.path(), b.path());
        drop(a);
        let c = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(c.path().ends_with("requests.ndjson"));
    }

    #[test]
    fn an_unreadable_line_is_skipped_not_stuck_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&[event(0)]);
        s.file.write_all(b"not json\n").unwrap();
        s.len += 9;
        s.append(&[event(1)]);
        let out = drain(&mut s);
        assert_eq!(out.iter().map(|e| e.latency_ms).collect::<Vec<_>>(), [0, 1]);
    }
}
