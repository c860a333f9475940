//! Status writes to the manifests: batched per namespace, started from what this
//! gateway last wrote when the file still holds it, and measured.
//!
//! A status write is a read-modify-write of one manifest under its namespace's
//! lock. Parsing the YAML back was most of its cost (about 0.8 ms of CPU), and the
//! file parsed was almost always the one this gateway had written one interval
//! earlier. So the index keeps, beside each request, the request as last written
//! and the SHA-256 of the bytes written ([`Written`]); a write reads the file (a
//! few microseconds), and only if its bytes are not those bytes does it parse them.
//! A controller's phase, a person's edit, another replica's write or a removal all
//! change the bytes, so a write never starts from a copy older than the file.
//!
//! A write renders only the status: the head of the manifest (apiVersion, kind,
//! metadata, spec) is kept rendered with the request ([`render`]), and rendered
//! again only when the flapping label flips. The new bytes are staged outside the
//! namespace directory and renamed into place ([`super::Staging`]).
//!
//! The writes of one namespace that arrive together go out as one batch, on one
//! blocking thread, under one taking of the lock. Each batch's CPU time is measured,
//! and [`StatusWrites::affordable_per_s`] turns it into the writes per second a
//! share of the machine's cores ([`CORES_SHARE`]) pays for: the status writer's cap
//! for this sink.
//!
//! Never apply an update to a cached request whose digest has not just been
//! compared with the file's bytes, read under the namespace lock.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::index::{digest, Index, Kept, Record, Written};
use super::render::{self, Head};
use super::{Durability, Move, Staging, LOCK_FILE};
use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::sink::{RequestRef, SinkError};

/// The share of the machine's cores the directory sink's status writes may take.
/// A tenth cost the ingest bench a quarter of its throughput for no smaller backlog
/// (docs/performance.md); three hundredths is what 200 writes/s of today's cost take
/// on 2 cores, so the cap grows with the machine and with cheaper writes, not with
/// the load.
const CORES_SHARE: f64 = 0.03;
/// The cost assumed before any write is measured: a write that parses its manifest.
const FIRST_COST: Duration = Duration::from_millis(1);
/// How many recent writes the measured cost follows: few, so that the cap rises
/// within a second once writes turn out cheap, and falls as fast if the disk slows.
const COST_MEMORY: f64 = 64.0;

/// The status writes of a directory sink.
pub struct StatusWrites {
    root: std::path::PathBuf,
    index: Arc<Index>,
    staging: Arc<Staging>,
    /// Writes waiting for their namespace's batch. A namespace is in the map while
    /// a thread writes its batches, and that thread takes what arrives meanwhile.
    waiting: Mutex<HashMap<String, Vec<Job>>>,
    /// The measured CPU time of a write, in nanoseconds (an `f64`'s bits).
    cost_ns: AtomicU64,
    /// Cores this process may use.
    cores: f64,
    /// Status writes that parsed their manifest, and those that started from what
    /// this gateway had written.
    parsed: AtomicU64,
    reused: AtomicU64,
}

struct Job {
    at: RequestRef,
    update: StatusUpdate,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// How the status writes of a sink started, since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Writes that parsed their manifest: the first after start or after a create
    /// by someone else, and every write after someone else changed the file.
    pub parsed: u64,
    /// Writes that started from what this gateway had written, the file unchanged.
    pub reused: u64,
}

impl StatusWrites {
    pub(super) fn new(root: std::path::PathBuf, index: Arc<Index>, staging: Arc<Staging>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        StatusWrites {
            root,
            index,
            staging,
            waiting: Mutex::default(),
            cost_ns: AtomicU64::new((FIRST_COST.as_nanos() as f64).to_bits()),
            cores,
            parsed: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Job>>> {
        // The map is only pushed to and taken from: no state is half-changed.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `update` to the request at `at`, in its namespace's next batch.
    pub async fn write(self: &Arc<Self>, at: &RequestRef, update: &StatusUpdate) -> Result<(), SinkError> {
        let (done, outcome) = oneshot::channel();
        let job = Job { at: at.clone(), update: update.clone(), done };
        let start = {
            let mut waiting = self.lock();
            match waiting.get_mut(&at.namespace) {
                Some(batch) => {
                    batch.push(job);
                    false
                }
                None => {
                    waiting.insert(at.namespace.clone(), vec![job]);
                    true
                }
            }
        };
        if start {
            let (writes, namespace) = (self.clone(), at.namespace.clone());
            tokio::task::spawn_blocking(move || writes.drain(&namespace));
        }
        outcome.await.unwrap_or_else(|_| Err(io::Error::other("the namespace's status writer failed").into()))
    }

    /// Writes `namespace`'s batches until none is waiting.
    fn drain(&self, namespace: &str) {
        let _draining = Draining { writes: self, namespace };
        loop {
            let batch = {
                let mut waiting = self.lock();
                let Some(batch) = waiting.get_mut(namespace) else { return };
                if batch.is_empty() {
                    waiting.remove(namespace);
                    return;
                }
                std::mem::take(batch)
            };
            self.write_batch(namespace, batch);
        }
    }

    fn write_batch(&self, namespace: &str, batch: Vec<Job>) {
        let started = thread_cpu_time();
        let writes = batch.len();
        let dir = self.root.join(namespace);
        match lock_namespace(&dir) {
            Ok(_lock) => {
                let mut buffers = Buffers::default();
                for job in batch {
                    let result = self.write_one(&dir, &job.at, &job.update, &mut buffers);
                    // The status writer may have given up waiting; the write stands.
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                for job in batch {
                    let error = match e.kind() {
                        io::ErrorKind::NotFound => {
                            // No namespace directory, so no manifest in it.
                            self.index.remove(&job.at);
                            SinkError::NotFound(job.at)
                        }
                        kind => io::Error::new(kind, e.to_string()).into(),
                    };
                    let _ = job.done.send(Err(error));
                }
            }
        }
        if let (Some(started), Some(ended)) = (started, thread_cpu_time()) {
            self.measured(writes, ended.saturating_sub(started));
        }
    }

    /// One read-modify-write, under the namespace lock.
    fn write_one(
        &self,
        dir: &Path,
        at: &RequestRef,
        update: &StatusUpdate,
        buffers: &mut Buffers,
    ) -> Result<(), SinkError> {
        let path = dir.join(format!("{}.yaml", at.name));
        let Buffers { read, write } = buffers;
        match fs::File::open(&path).and_then(|mut file| {
            read.clear();
            file.read_to_end(read)
        }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.remove(at);
                return Err(SinkError::NotFound(at.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let (mut request, head) = match self.index.take_written(at, &digest(read)) {
            Some(kept) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                let Kept { request, head } = *kept;
                (request, Some(head))
            }
            None => {
                self.parsed.fetch_add(1, Ordering::Relaxed);
                let request = serde_norway::from_slice::<RemediationRequest>(read)
                    .map_err(|e| SinkError::Corrupt { path: path.display().to_string(), source: e })?;
                (request, None)
            }
        };
        request.status.get_or_insert_with(Default::default).apply(update);
        // The label follows the condition, in the same write, and the head with it.
        let relabelled = crate::remediation::label_flapping(&mut request);
        let head = match head {
            Some(head) if !relabelled => head,
            _ => Head::of(&mut request),
        };
        render::manifest(&head, &request, write);
        let written = digest(write);
        // The watch, woken by the rename, knows this file and its bytes for this
        // gateway's.
        let landing = |file| self.index.landing(at, written, file);
        let file = self.staging.place(&path, write, Durability::Rename, Move::Rename, &landing)?;
        if let Some(record) = Record::of(&request) {
            self.index.wrote(at, record, Written { digest: written, request, head, file: Some(file) });
        }
        Ok(())
    }

    /// Folds a batch's CPU time into the measured cost of a write.
    fn measured(&self, writes: usize, spent: Duration) {
        let writes = writes as f64;
        let per_write = spent.as_nanos() as f64 / writes;
        let weight = writes / (writes + COST_MEMORY);
        // One thread per namespace may race here; a lost update only delays the
        // figure by one batch.
        let old = f64::from_bits(self.cost_ns.load(Ordering::Relaxed));
        self.cost_ns.store((old + (per_write - old) * weight).to_bits(), Ordering::Relaxed);
    }

    /// The measured CPU time of a status write.
    pub fn cost(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.cost_ns.load(Ordering::Relaxed)) as u64)
    }

    /// Status writes per second that [`CORES_SHARE`] of this process's cores pays
    /// for, at the measured cost of a write.
    pub fn affordable_per_s(&self) -> f64 {
        let cost_s = f64::from_bits(self.cost_ns.load(Ordering::Relaxed)) / 1e9;
        // Never below one a second: a write measured absurdly slow (a thread
        // descheduled) must not stop the writes.
        (CORES_SHARE * self.cores / cost_s.max(1e-9)).max(1.0)
    }

    pub fn reads(&self) -> Reads {
        Reads { parsed: self.parsed.load(Ordering::Relaxed), reused: self.reused.load(Ordering::Relaxed) }
    }
}

/// The bytes a batch's writes read and render, kept from one write to the next.
#[derive(Default)]
struct Buffers {
    read: Vec<u8>,
    write: Vec<u8>,
}

/// Drops a namespace's waiting writes if its thread panics, so that their writers
/// get an error (and retry) and the next write starts a thread again.
struct Draining<'a> {
    writes: &'a StatusWrites,
    namespace: &'a str,
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.writes.lock().remove(self.namespace);
        }
    }
}

/// Takes the advisory lock of the namespace directory `dir`, held until the file
/// is dropped. Read-modify-writes must not interleave with another writer's (a
/// second gateway sharing the directory), or an older count could land last.
fn lock_namespace(dir: &Path) -> io::Result<fs::File> {
    let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
    lock.lock()?;
    Ok(lock)
}

/// The CPU time this thread has used, if the clock can be read.
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given, which outlives the call.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (read == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remediation::{self, Classification, FlapUpdate, InhibitedUpdate};
    use crate::signal::TargetResource;
    use crate::sink::dir::index::FileId;
    use crate::sink::dir::{to_yaml, DirSink};
    use crate::sink::{Lookup, Sink};

    const NS: &str = "shop";

    fn pod(name: &str) -> TargetResource {
        TargetResource { kind: "Pod".into(), name: name.into(), namespace: NS.into(), cluster: String::new() }
    }

    /// A request as the pipeline builds one, received at a time with nanoseconds
    /// (which the manifest's seconds do not keep).
    fn request(pod_name: &str) -> RemediationRequest {
        let mut signal = crate::signal::test_signal("HighMemory", NS, pod(pod_name), &[("severity", "critical")]);
        signal.received_time = jiff::Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        signal.annotations =
            [("summary".to_string(), "memory: \"high\"\nsee runbook".to_string())].into_iter().collect();
        let class = Classification { environment: "production".into(), priority: "P1".into(), rule: "default".into() };
        remediation::build(&signal, NS, 1_700_000_000, &class, &StatusUpdate::seen(1_700_000_000, 1_700_000_000))
    }

    fn repeat(writer: u64, count: u64, last_seen_s: u32) -> StatusUpdate {
        StatusUpdate { writer, count, ..StatusUpdate::seen(1_700_000_000, last_seen_s) }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        sink: DirSink,
    }

    impl Fixture {
        async fn with(requests: &[&RemediationRequest]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let sink = DirSink::new(dir.path(), Duration::from_secs(7200)).unwrap();
            for request in requests {
                sink.create(request).await.unwrap();
            }
            Fixture { dir, sink }
        }

        fn path(&self, at: &RequestRef) -> std::path::PathBuf {
            self.sink.path_of(at)
        }

        fn read(&self, at: &RequestRef) -> RemediationRequest {
            serde_norway::from_str(&fs::read_to_string(self.path(at)).unwrap()).unwrap()
        }

        /// Writes `n` repeats of writer 7, one a second, one write each.
        async fn repeats(&self, at: &RequestRef, n: u64) {
            for n in 1..=n {
                self.sink.update_status(at, &repeat(7, n, 1_700_000_000 + n as u32)).await.unwrap();
            }
        }

        /// Waits until the watch follows the namespace directory: moves someone
        /// else's manifest into it and waits for the index to hold it. A change made
        /// before the directory is watched is one the watch never reports.
        async fn watched(&self) {
            self.moved_in(&request("watched"), "the watch to follow the namespace").await;
        }

        /// Moves `other`, someone else's manifest, into place, and waits (`what`)
        /// until the index holds it.
        async fn moved_in(&self, other: &RemediationRequest, what: &str) {
            let tmp = self.dir.path().join(NS).join(format!(".{}.tmp", at(other).name));
            fs::write(&tmp, to_yaml(other)).unwrap();
            fs::rename(&tmp, self.path(&at(other))).unwrap();
            let indexed = || async { self.sink.lookup(&at(other)) == Lookup::Open };
            tidegate_testkit::eventually_within(what, WATCH_LIMIT, indexed).await;
        }

        /// Rewrites the manifest in place, as a controller or an editor would,
        /// without the namespace lock and without moving a file into place.
        fn edit(&self, at: &RequestRef, change: impl FnOnce(&mut RemediationRequest)) {
            let mut request = self.read(at);
            change(&mut request);
            fs::write(self.path(at), to_yaml(&request)).unwrap();
        }
    }

    impl Fixture {
        /// Turns the phase `Running` into `Skipped` in place, and puts the
        /// modification time back: the same device, inode, size and mtime, nothing
        /// a stat of the file could tell from the gateway's own write.
        fn skip_in_place(&self, at: &RequestRef) {
            let path = self.path(at);
            let before = fs::metadata(&path).unwrap();
            let text = fs::read_to_string(&path).unwrap().replace("phase: Running", "phase: Skipped");
            fs::write(&path, &text).unwrap();
            fs::File::options().write(true).open(&path).unwrap().set_modified(before.modified().unwrap()).unwrap();
            assert_eq!(FileId::of(&fs::metadata(&path).unwrap()), FileId::of(&before));
        }
    }

    /// The watch runs on a thread of its own, as slow as the machine is loaded.
    const WATCH_LIMIT: Duration = Duration::from_secs(30);

    fn at(request: &RemediationRequest) -> RequestRef {
        super::super::reference(request)
    }

    fn count(request: &RemediationRequest) -> u64 {
        request.status.as_ref().unwrap().deduplication.as_ref().unwrap().occurrence_count
    }

    fn phase(request: &RemediationRequest) -> Option<&str> {
        request.status.as_ref().unwrap().phase.as_deref()
    }

    #[tokio::test]
    async fn a_status_write_starts_from_what_it_wrote_while_the_file_is_unchanged() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.repeats(&at(&rr), 5).await;
        assert_eq!(f.sink.status_reads(), Reads { parsed: 0, reused: 5 }, "no write parsed the manifest");
        assert_eq!(count(&f.read(&at(&rr))), 1 + 5, "the creating occurrence and the writer's five");
    }

    #[tokio::test]
    async fn a_controllers_phase_written_between_two_status_writes_survives() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.sink.update_status(&at(&rr), &repeat(7, 1, 1_700_000_001)).await.unwrap();
        f.edit(&at(&rr), |r| r.status.as_mut().unwrap().phase = Some("Completed".into()));
        f.sink.update_status(&at(&rr), &repeat(7, 2, 1_700_000_002)).await.unwrap();
        let written = f.read(&at(&rr));
        assert_eq!(phase(&written), Some("Completed"), "the controller's phase was overwritten");
        assert_eq!(count(&written), 1 + 2, "and the count still went on");
        assert_eq!(f.sink.status_reads(), Reads { parsed: 1, reused: 1 }, "the edited file was parsed");
    }

    #[tokio::test]
    async fn an_edit_that_keeps_the_files_size_and_times_is_still_seen() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.edit(&at(&rr), |r| r.status.as_mut().unwrap().phase = Some("Running".into()));
        f.sink.update_status(&at(&rr), &repeat(7, 1, 1_700_000_001)).await.unwrap();
        f.skip_in_place(&at(&rr));
        f.sink.update_status(&at(&rr), &repeat(7, 2, 1_700_000_002)).await.unwrap();
        assert_eq!(phase(&f.read(&at(&rr))), Some("Skipped"));
    }

    #[tokio::test]
    async fn a_manifest_removed_between_two_status_writes_is_not_written_back() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.sink.update_status(&at(&rr), &repeat(7, 1, 1_700_000_001)).await.unwrap();
        fs::remove_file(f.path(&at(&rr))).unwrap();
        let second = f.sink.update_status(&at(&rr), &repeat(7, 2, 1_700_000_002)).await;
        assert!(matches!(second, Err(SinkError::NotFound(_))), "{second:?}");
        assert!(!f.path(&at(&rr)).exists());
        assert_eq!(f.sink.lookup(&at(&rr)), Lookup::Deleted);
    }

    #[tokio::test]
    async fn a_write_from_the_cache_writes_the_bytes_a_parsed_write_would() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        let flapping = StatusUpdate {
            flap: Some(FlapUpdate::Flapping { transitions: 4, at_s: 1_700_000_003, window_s: 1800 }),
            ..repeat(7, 2, 1_700_000_003)
        };
        let held = StatusUpdate {
            inhibited: Some(InhibitedUpdate { count: 3, resources: vec![pod("web-1")], cap: 10 }),
            ..repeat(9, 1, 1_700_000_004)
        };
        let settled = StatusUpdate {
            flap: Some(FlapUpdate::Settled { last_s: 1_700_000_003, at_s: 1_700_000_005, window_s: 1800 }),
            ..repeat(7, 3, 1_700_000_005)
        };
        for update in [repeat(7, 1, 1_700_000_001), flapping, held, settled] {
            let mut parsed = f.read(&at(&rr));
            parsed.status.as_mut().unwrap().apply(&update);
            remediation::label_flapping(&mut parsed);
            f.sink.update_status(&at(&rr), &update).await.unwrap();
            assert_eq!(fs::read_to_string(f.path(&at(&rr))).unwrap(), to_yaml(&parsed));
        }
        assert_eq!(f.sink.status_reads(), Reads { parsed: 0, reused: 4 });
    }

    #[tokio::test]
    async fn the_flap_sweep_reads_only_the_manifests_the_index_knows_flap() {
        let (calm, marked) = (request("web-0"), request("web-1"));
        let f = Fixture::with(&[&calm, &marked]).await;
        let flapping = StatusUpdate {
            flap: Some(FlapUpdate::Flapping { transitions: 4, at_s: 1_700_000_003, window_s: 1800 }),
            ..repeat(7, 2, 1_700_000_003)
        };
        // Marked by this gateway's status write, and by someone else's manifest,
        // which the index reads through the watch.
        f.sink.update_status(&at(&marked), &flapping).await.unwrap();
        let mut theirs = request("web-2");
        theirs.status.as_mut().unwrap().apply(&flapping);
        f.moved_in(&theirs, "the index to read someone else's flapping manifest").await;
        let mut names: Vec<String> = f.sink.flapping_requests().await.unwrap().iter().map(|rr| at(rr).name).collect();
        let mut expected = [at(&marked).name, at(&theirs).name];
        names.sort();
        expected.sort();
        assert_eq!(names, expected);
        // What is read: the paths of the flapping ones, not the calm one's.
        let mut read: Vec<String> = f.sink.index.open_refs(|r| r.flapping).into_iter().map(|at| at.name).collect();
        read.sort();
        assert_eq!(read, expected, "the calm request's manifest is not read");
        assert!(f.sink.open_requests().await.unwrap().iter().any(|rr| at(rr) == at(&calm)));
    }

    #[tokio::test]
    async fn writes_to_many_requests_of_a_namespace_at_once_all_land() {
        let requests: Vec<_> = (0..20).map(|n| request(&format!("web-{n}"))).collect();
        let f = Fixture::with(&requests.iter().collect::<Vec<_>>()).await;
        for round in 1..=3 {
            let writes = requests.iter().flat_map(|rr| {
                [7, 9].map(|writer| {
                    let (sink, at) = (&f.sink, at(rr));
                    async move { sink.update_status(&at, &repeat(writer, round, 1_700_000_000 + round as u32)).await }
                })
            });
            for written in futures::future::join_all(writes).await {
                written.unwrap();
            }
        }
        for rr in &requests {
            assert_eq!(count(&f.read(&at(rr))), 1 + 3 + 3, "{}: two writers' three each", at(rr).name);
        }
    }

    #[tokio::test]
    async fn the_watch_does_not_parse_the_sinks_own_writes() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.repeats(&at(&rr), 20).await;
        // Someone else's manifest, moved into place: the watch reports events in
        // order, so once it is indexed every event of the writes above was handled.
        f.moved_in(&request("web-1"), "the watch to index the other manifest").await;
        // Twenty own writes parsed back would be twenty parses or more (each is a
        // rename the watch reports). Allowed: the other manifest's (its rename may be
        // reported twice), and those of a watch thread descheduled between reading a
        // file and checking it while two more writes landed, which a loaded machine
        // can make frequent but never make one per write: the last writes' bytes stay.
        assert!(f.sink.watch_parsed() < 20, "the watch parsed {} manifests", f.sink.watch_parsed());
    }

    #[tokio::test]
    async fn the_watch_sees_an_edit_in_place_that_keeps_the_identity_of_the_sinks_own_file() {
        let rr = request("web-0");
        let f = Fixture::with(&[&rr]).await;
        f.watched().await;
        f.edit(&at(&rr), |r| r.status.as_mut().unwrap().phase = Some("Running".into()));
        // Moved into place by the sink: a file the watch knows without reading it.
        f.sink.update_status(&at(&rr), &repeat(7, 1, 1_700_000_001)).await.unwrap();
        f.skip_in_place(&at(&rr));
        let seen = || async { f.sink.lookup(&at(&rr)) == Lookup::Terminal };
        tidegate_testkit::eventually_within("the watch to see the phase written in place", WATCH_LIMIT, seen).await;
    }

    #[tokio::test]
    async fn what_was_written_is_forgotten_with_its_request() {
        let requests: Vec<_> = (0..3).map(|n| request(&format!("web-{n}"))).collect();
        let f = Fixture::with(&requests.iter().collect::<Vec<_>>()).await;
        assert_eq!(f.sink.written(), 3, "one per request created");
        f.watched().await;
        fs::remove_file(f.path(&at(&requests[0]))).unwrap();
        f.edit(&at(&requests[1]), |r| r.status.as_mut().unwrap().phase = Some("Completed".into()));
        let forgotten = || async { f.sink.written() == 1 };
        tidegate_testkit::eventually_within("only the untouched request's write kept", WATCH_LIMIT, forgotten).await;
    }

    #[test]
    fn the_cap_is_a_share_of_the_cores_at_the_measured_cost_of_a_write() {
        let root = tempfile::tempdir().unwrap();
        let staging = Arc::new(Staging::new(root.path()).unwrap());
        let writes = StatusWrites::new(root.path().into(), Arc::new(Index::new(Duration::from_secs(60))), staging);
        let cores = writes.cores;
        assert_eq!(writes.affordable_per_s().round(), (CORES_SHARE * cores / FIRST_COST.as_secs_f64()).round());
        for _ in 0..100 {
            writes.measured(32, Duration::from_micros(32 * 40));
        }
        assert!((writes.cost().as_secs_f64() - 40e-6).abs() < 1e-6, "{:?}", writes.cost());
        let expected = CORES_SHARE * cores / 40e-6;
        assert!((writes.affordable_per_s() - expected).abs() < expected * 0.03, "{}", writes.affordable_per_s());
    }
}
