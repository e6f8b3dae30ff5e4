//! The event journal: numbers the engine's events, keeps the newest of them,
//! and gives every client of `GET /events` a stream that can resume.
//!
//! One [`Journal`] task reads the engine's broadcast from the moment the
//! journal is built, so nothing is missed while no client is connected. Every
//! event gets the id `EPOCH-N`: the journal's epoch (new for every journal, so
//! for every start of the server) and a number that grows by one per engine
//! event, from 1. The newest events (up to the journal's capacity) are kept in
//! a ring buffer; a client that comes back with the id of the last event it saw
//! gets every event after it, then the live ones, without gap or duplicate.
//! When that cannot be done (an id of another epoch, a malformed one, one older
//! than the buffer, one the journal never gave, or events lost in between) the
//! client gets one `reset` event: reload everything, then follow the live
//! events.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ci_engine::EngineEvent;
use futures::Stream;
use poem::web::sse::Event;
use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

use super::{CONNECTED, RESET, event_json};

/// How many events a journal keeps for clients that resume, unless told
/// otherwise.
pub const DEFAULT_CAPACITY: usize = 1024;

/// How many events the live feed holds for a slow client before that client
/// lags. A lagging client catches up from the journal's buffer when it still
/// reaches back far enough, and gets a `reset` otherwise.
pub const LIVE_CAPACITY: usize = 256;

/// Why a client got a `reset` instead of the events it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The `Last-Event-ID` is from another epoch: the server restarted.
    OtherEpoch,
    /// The `Last-Event-ID` is not of the form `EPOCH-N`.
    MalformedId,
    /// The events after the `Last-Event-ID` are no longer kept.
    TooOld,
    /// The `Last-Event-ID` names an event this journal has not sent yet.
    FutureId,
    /// The client fell behind the live feed further than the buffer reaches.
    Lagged,
    /// The journal itself fell behind the engine and lost events.
    Gap,
}

impl ResetReason {
    /// The reason as it appears in the `reset` event's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtherEpoch => "other_epoch",
            Self::MalformedId => "malformed_id",
            Self::TooOld => "too_old",
            Self::FutureId => "future_id",
            Self::Lagged => "lagged",
            Self::Gap => "gap",
        }
    }
}

/// One event of a client's stream: its SSE id (if it has one) and its JSON
/// data, whose `type` field names it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    id: Option<String>,
    data: Arc<serde_json::Value>,
}

impl StreamEvent {
    /// An event with SSE id `id` (none when `None`) and JSON `data`.
    pub fn new(id: Option<String>, data: serde_json::Value) -> Self {
        Self {
            id,
            data: Arc::new(data),
        }
    }

    /// The SSE id (`EPOCH-N`); `None` for a `connected` event followed by a
    /// `reset`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The event's JSON data.
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }

    /// The event's name: the data's `type` field (`message` if it has none).
    pub fn kind(&self) -> &str {
        self.data
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("message")
    }

    /// The server-sent event: `id:` (when there is one), `event:` the kind,
    /// `data:` the JSON on one line.
    pub fn to_sse(&self) -> Event {
        let event = Event::message(self.data.to_string()).event_type(self.kind());
        match &self.id {
            Some(id) => event.id(id.clone()),
            None => event,
        }
    }
}

/// Serializes as its data alone (the id travels in the SSE `id:` line).
impl Serialize for StreamEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

/// A numbered engine event.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    data: Arc<serde_json::Value>,
}

/// What the journal sends on its live feed.
#[derive(Debug, Clone)]
enum Live {
    /// The next event.
    Event(Entry),
    /// Events up to `head` were lost; the next event is `head + 1`.
    Gap { head: u64 },
}

struct State {
    /// The most events the buffer keeps.
    capacity: usize,
    /// The number of the newest event (0 before the first).
    head: u64,
    /// The oldest position a client can resume from: every event after it
    /// (up to `head`) is in the buffer.
    floor: u64,
    /// The events after `floor`, oldest first.
    buffer: VecDeque<Entry>,
    /// The live feed; `None` once the engine's events ended.
    live: Option<broadcast::Sender<Live>>,
}

impl State {
    fn trim(&mut self) {
        while self.buffer.len() > self.capacity {
            if let Some(old) = self.buffer.pop_front() {
                self.floor = old.seq;
            }
        }
    }
}

struct Shared {
    epoch: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    fn event(&self, entry: &Entry) -> StreamEvent {
        StreamEvent {
            id: Some(self.id(entry.seq)),
            data: Arc::clone(&entry.data),
        }
    }

    fn reset(&self, head: u64, reason: ResetReason, message: String) -> StreamEvent {
        StreamEvent {
            id: Some(self.id(head)),
            data: Arc::new(serde_json::json!({
                "type": RESET,
                "reason": reason.as_str(),
                "message": message,
            })),
        }
    }

    /// Numbers `data`, keeps it and sends it to the live clients.
    fn record(&self, data: serde_json::Value) {
        let mut state = self.lock();
        state.head += 1;
        let entry = Entry {
            seq: state.head,
            data: Arc::new(data),
        };
        if state.capacity == 0 {
            state.floor = entry.seq;
        } else {
            state.buffer.push_back(entry.clone());
            state.trim();
        }
        if let Some(live) = &state.live {
            // No client connected is no error.
            let _ = live.send(Live::Event(entry));
        }
    }

    /// Records that `missed` engine events were lost: their numbers are
    /// skipped, and nobody can resume from before them.
    fn gap(&self, missed: u64) {
        let mut state = self.lock();
        state.head += missed;
        state.floor = state.head;
        state.buffer.clear();
        let head = state.head;
        if let Some(live) = &state.live {
            let _ = live.send(Live::Gap { head });
        }
    }
}

/// Closes the live feed when the journal's task ends, however it ends, so
/// that client streams end too.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.lock().live = None;
    }
}

/// The engine's events, numbered and kept for clients that resume; see the
/// documentation of the `journal` module.
///
/// Dropping the journal stops its task and ends its clients' streams.
pub struct Journal {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal of `events` (a receiver taken now, so nothing sent from now
    /// on is missed) that keeps the newest `capacity` events, with a new
    /// epoch. Its task runs until `events` closes or the journal is dropped.
    ///
    /// # Panics
    /// When called outside a Tokio runtime (it spawns its task).
    pub fn spawn(events: broadcast::Receiver<EngineEvent>, capacity: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let shared = Arc::new(Shared {
            epoch: new_epoch(),
            state: Mutex::new(State {
                capacity,
                head: 0,
                floor: 0,
                buffer: VecDeque::new(),
                live: Some(live),
            }),
        });
        // The guard is part of the task's future from the start, so the feed
        // closes even when the task is aborted before it first runs.
        let task = tokio::spawn(pump(CloseOnDrop(Arc::clone(&shared)), events));
        Self { shared, task }
    }

    /// The journal's epoch: the part of every id before the `-`.
    pub fn epoch(&self) -> &str {
        &self.shared.epoch
    }

    /// The number of the newest event (0 before the first).
    pub fn head(&self) -> u64 {
        self.shared.lock().head
    }

    /// The most events the buffer keeps.
    pub fn capacity(&self) -> usize {
        self.shared.lock().capacity
    }

    /// Keeps at most `capacity` events from now on, dropping the oldest ones
    /// if the buffer holds more. With 0, nobody can resume from before the
    /// newest event.
    pub fn set_capacity(&self, capacity: usize) {
        let mut state = self.shared.lock();
        state.capacity = capacity;
        if capacity == 0 {
            state.buffer.clear();
            state.floor = state.head;
        } else {
            state.trim();
        }
    }

    /// A client's stream, given the `Last-Event-ID` it sent (if any).
    ///
    /// The first event is `connected`, whose data has the `epoch` and the
    /// `last_id` the stream continues after. Then:
    /// - without an id (or an empty one): the live events;
    /// - with an id of this epoch that the buffer still reaches back to:
    ///   every later event, in order and with its own id, then the live
    ///   events;
    /// - otherwise: one `reset` (with the newest id, and the `reason`), then
    ///   the live events. Its `connected` has no id, so that a client that
    ///   loses the connection before the `reset` sends its old id again.
    ///
    /// A client that falls behind the live feed catches up from the buffer,
    /// or gets a `reset` when the buffer no longer reaches back far enough; a
    /// gap in the journal's own events is a `reset` too. No event is sent
    /// twice, none is skipped without a `reset`. The stream ends when the
    /// engine's events end or the journal is dropped.
    pub fn stream(
        &self,
        last_event_id: Option<&str>,
    ) -> impl Stream<Item = StreamEvent> + Send + 'static {
        let shared = &self.shared;
        let state = shared.lock();
        // Subscribing under the lock: the feed brings exactly the events after
        // `head`, which the buffer does not have yet.
        let rx = state.live.as_ref().map(broadcast::Sender::subscribe);
        let head = state.head;
        let mut queue = VecDeque::new();
        let connected_id = match resume_point(shared, &state, last_event_id) {
            Ok(from) => {
                queue.extend(
                    state
                        .buffer
                        .iter()
                        .filter(|e| e.seq > from)
                        .map(|e| shared.event(e)),
                );
                Some(shared.id(from))
            }
            Err((reason, message)) => {
                tracing::debug!(reason = reason.as_str(), %message, "an event client is reset");
                queue.push_back(shared.reset(head, reason, message));
                None
            }
        };
        drop(state);
        let last_id = connected_id.clone().unwrap_or_else(|| shared.id(head));
        queue.push_front(StreamEvent {
            id: connected_id,
            data: Arc::new(serde_json::json!({
                "type": CONNECTED,
                "epoch": shared.epoch,
                "last_id": last_id,
            })),
        });
        let client = Client {
            shared: Arc::clone(shared),
            rx,
            position: head,
            queue,
        };
        futures::stream::unfold(client, Client::next)
    }
}

/// Where a client resumes from: the position it asked for, or why it cannot.
fn resume_point(
    shared: &Shared,
    state: &State,
    last_event_id: Option<&str>,
) -> Result<u64, (ResetReason, String)> {
    let raw = match last_event_id.map(str::trim) {
        None | Some("") => return Ok(state.head),
        Some(raw) => raw,
    };
    let shown = shorten(raw);
    let malformed = || {
        (
            ResetReason::MalformedId,
            format!("the Last-Event-ID {shown:?} is not of the form EPOCH-N"),
        )
    };
    let (epoch, number) = raw.split_once('-').ok_or_else(malformed)?;
    let epoch_ok = !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
    let number_ok = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    if !epoch_ok || !number_ok {
        return Err(malformed());
    }
    if epoch != shared.epoch {
        return Err((
            ResetReason::OtherEpoch,
            format!(
                "the Last-Event-ID {shown:?} is from another epoch (the server restarted; \
                 this one is {})",
                shared.epoch
            ),
        ));
    }
    let position: u64 = number.parse().map_err(|_| {
        (
            ResetReason::FutureId,
            format!("the Last-Event-ID {shown:?} is beyond any event number"),
        )
    })?;
    if position > state.head {
        return Err((
            ResetReason::FutureId,
            format!(
                "the Last-Event-ID {shown:?} names an event not sent yet (the newest is {})",
                shared.id(state.head)
            ),
        ));
    }
    if position < state.floor {
        return Err((
            ResetReason::TooOld,
            format!(
                "the events after {shown} are no longer all kept (the server keeps the last {}, \
                 from {} on)",
                state.capacity,
                shared.id(state.floor + 1)
            ),
        ));
    }
    Ok(position)
}

/// At most 64 characters of a client's id, for messages and logs.
fn shorten(raw: &str) -> String {
    raw.chars().take(64).collect()
}

/// One client's place in the journal.
struct Client {
    shared: Arc<Shared>,
    rx: Option<broadcast::Receiver<Live>>,
    /// The number of the last event this client was sent (or reset to).
    position: u64,
    /// Events to send before reading the live feed again.
    queue: VecDeque<StreamEvent>,
}

impl Client {
    async fn next(mut self) -> Option<(StreamEvent, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((event, self));
            }
            let received = self.rx.as_mut()?.recv().await;
            match received {
                Ok(Live::Event(entry)) => {
                    // Already replayed from the buffer: skip.
                    if entry.seq <= self.position {
                        continue;
                    }
                    self.position = entry.seq;
                    let event = self.shared.event(&entry);
                    return Some((event, self));
                }
                Ok(Live::Gap { head }) => {
                    if head <= self.position {
                        continue;
                    }
                    self.position = head;
                    let event = self.shared.reset(
                        head,
                        ResetReason::Gap,
                        "the server fell behind the engine and lost events".to_owned(),
                    );
                    return Some((event, self));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => self.catch_up(missed),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// After the live feed dropped `missed` events for this client: queues
    /// them from the buffer, or a `reset` when it no longer has them all.
    fn catch_up(&mut self, missed: u64) {
        let shared = Arc::clone(&self.shared);
        let state = shared.lock();
        if self.position >= state.floor {
            let from = self.position;
            for entry in state.buffer.iter().filter(|e| e.seq > from) {
                self.queue.push_back(shared.event(entry));
                self.position = entry.seq;
            }
            tracing::debug!(
                missed,
                "an event client fell behind and catches up from the buffer"
            );
        } else {
            tracing::info!(
                missed,
                "an event client fell behind further than the buffer reaches"
            );
            self.position = state.head;
            self.queue.push_back(shared.reset(
                state.head,
                ResetReason::Lagged,
                format!(
                    "you fell behind the live events by more than the server keeps ({})",
                    state.capacity
                ),
            ));
        }
    }
}

/// The journal's task: numbers and keeps every engine event.
async fn pump(close: CloseOnDrop, mut events: broadcast::Receiver<EngineEvent>) {
    let shared = &close.0;
    loop {
        match events.recv().await {
            Ok(event) => shared.record(event_json(&event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the event journal fell behind the engine; clients before the gap are reset"
                );
                shared.gap(missed);
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A new epoch: the time in milliseconds and a random part, in base 36
/// (lowercase letters and digits only, so never a `-`).
fn new_epoch() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // A randomly keyed hasher: enough randomness to tell apart two starts in
    // the same millisecond.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(ms);
    const RANDOM_SPACE: u64 = 36 * 36 * 36 * 36;
    let mut epoch = base36(ms);
    let random = base36(hasher.finish() % RANDOM_SPACE);
    let _ = write!(epoch, "{random:0>4}");
    epoch
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[usize::try_from(n % 36).unwrap_or(0)]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    type Client = Pin<Box<dyn Stream<Item = StreamEvent> + Send>>;

    /// Bound on waiting for anything; the tests never wait for time to pass.
    const WITHIN: Duration = Duration::from_secs(10);

    fn event(n: u64) -> EngineEvent {
        EngineEvent::RunnerUp {
            runner: format!("r{n}"),
        }
    }

    fn runner_of(e: &StreamEvent) -> &str {
        e.data()["runner"].as_str().unwrap_or("")
    }

    fn id(journal: &Journal, n: u64) -> String {
        format!("{}-{n}", journal.epoch())
    }

    fn connect(journal: &Journal, last_event_id: Option<&str>) -> Client {
        Box::pin(journal.stream(last_event_id))
    }

    async fn next(client: &mut Client) -> StreamEvent {
        tokio::time::timeout(WITHIN, client.next())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    /// Waits (yielding, with a deadline) until the journal numbered `head` events.
    async fn settle(journal: &Journal, head: u64) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while journal.head() < head {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the journal numbered {} events, not {head}",
                journal.head()
            );
            tokio::task::yield_now().await;
        }
    }

    /// A journal of a fake engine that already sent events 1 to `n`.
    async fn journal_after(n: u64, capacity: usize) -> (broadcast::Sender<EngineEvent>, Journal) {
        let (tx, rx) = broadcast::channel(4096);
        let journal = Journal::spawn(rx, capacity);
        for i in 1..=n {
            tx.send(event(i)).expect("the journal listens");
        }
        settle(&journal, n).await;
        (tx, journal)
    }

    fn assert_connected(e: &StreamEvent, journal: &Journal, id: Option<&str>, last_id: &str) {
        assert_eq!(e.kind(), CONNECTED, "{e:?}");
        assert_eq!(e.id(), id, "{e:?}");
        assert_eq!(e.data()["epoch"], journal.epoch(), "{e:?}");
        assert_eq!(e.data()["last_id"], last_id, "{e:?}");
    }

    fn assert_reset(e: &StreamEvent, id: &str, reason: ResetReason) {
        assert_eq!(e.kind(), RESET, "{e:?}");
        assert_eq!(e.id(), Some(id), "{e:?}");
        assert_eq!(e.data()["reason"], reason.as_str(), "{e:?}");
        assert!(
            e.data()["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{e:?}"
        );
    }

    #[test]
    fn epochs_are_compact_differ_and_have_no_dash() {
        let a = new_epoch();
        let b = new_epoch();
        for e in [&a, &b] {
            assert!(e.len() >= 5 && e.len() <= 16, "{e}");
            assert!(
                e.bytes()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
                "{e}"
            );
        }
        assert_ne!(
            a, b,
            "two epochs in a row are told apart by their random part"
        );
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[tokio::test]
    async fn events_are_numbered_from_one_after_a_connected_with_the_position() {
        let (tx, journal) = journal_after(0, DEFAULT_CAPACITY).await;
        let mut client = connect(&journal, None);
        let first = next(&mut client).await;
        assert_connected(&first, &journal, Some(&id(&journal, 0)), &id(&journal, 0));
        for i in 1..=3 {
            tx.send(event(i)).expect("the journal listens");
        }
        for i in 1..=3 {
            let e = next(&mut client).await;
            assert_eq!(e.id(), Some(id(&journal, i).as_str()));
            assert_eq!(e.kind(), "runner_up");
            assert_eq!(runner_of(&e), format!("r{i}"));
        }
        // A new client starts at the newest event.
        let mut late = connect(&journal, None);
        assert_connected(
            &next(&mut late).await,
            &journal,
            Some(&id(&journal, 3)),
            &id(&journal, 3),
        );
        tx.send(event(4)).expect("the journal listens");
        assert_eq!(next(&mut late).await.id(), Some(id(&journal, 4).as_str()));
    }

    #[tokio::test]
    async fn a_client_resumes_after_its_last_id_with_the_missed_events_then_live_ones() {
        let (tx, journal) = journal_after(5, DEFAULT_CAPACITY).await;
        let mut client = connect(&journal, Some(&id(&journal, 2)));
        assert_connected(
            &next(&mut client).await,
            &journal,
            Some(&id(&journal, 2)),
            &id(&journal, 2),
        );
        for i in 3..=5 {
            let e = next(&mut client).await;
            assert_eq!(e.id(), Some(id(&journal, i).as_str()));
            assert_eq!(runner_of(&e), format!("r{i}"));
        }
        tx.send(event(6)).expect("the journal listens");
        let live = next(&mut client).await;
        assert_eq!(live.id(), Some(id(&journal, 6).as_str()));
        assert_eq!(runner_of(&live), "r6");

        // Up to date: nothing to replay; an empty id is no id.
        let mut up_to_date = connect(&journal, Some(&id(&journal, 6)));
        let mut empty = connect(&journal, Some(""));
        for c in [&mut up_to_date, &mut empty] {
            assert_connected(
                &next(c).await,
                &journal,
                Some(&id(&journal, 6)),
                &id(&journal, 6),
            );
        }
        tx.send(event(7)).expect("the journal listens");
        for c in [&mut up_to_date, &mut empty] {
            assert_eq!(next(c).await.id(), Some(id(&journal, 7).as_str()));
        }
    }

    #[tokio::test]
    async fn the_buffer_keeps_the_newest_events_only() {
        let (tx, journal) = journal_after(5, 3).await;
        // 3, 4 and 5 are kept: a client at 2 resumes, one at 1 cannot.
        let mut at_two = connect(&journal, Some(&id(&journal, 2)));
        assert_eq!(next(&mut at_two).await.kind(), CONNECTED);
        for i in 3..=5 {
            assert_eq!(next(&mut at_two).await.id(), Some(id(&journal, i).as_str()));
        }
        let mut at_one = connect(&journal, Some(&id(&journal, 1)));
        let connected = next(&mut at_one).await;
        assert_connected(&connected, &journal, None, &id(&journal, 5));
        assert_reset(
            &next(&mut at_one).await,
            &id(&journal, 5),
            ResetReason::TooOld,
        );
        tx.send(event(6)).expect("the journal listens");
        assert_eq!(next(&mut at_one).await.id(), Some(id(&journal, 6).as_str()));

        // Shrinking the buffer drops the oldest at once.
        journal.set_capacity(1);
        assert_eq!(journal.capacity(), 1);
        let mut at_four = connect(&journal, Some(&id(&journal, 4)));
        assert_eq!(next(&mut at_four).await.id(), None);
        assert_reset(
            &next(&mut at_four).await,
            &id(&journal, 6),
            ResetReason::TooOld,
        );
        let mut at_five = connect(&journal, Some(&id(&journal, 5)));
        assert_eq!(
            next(&mut at_five).await.id(),
            Some(id(&journal, 5).as_str())
        );
        assert_eq!(
            next(&mut at_five).await.id(),
            Some(id(&journal, 6).as_str())
        );

        // Without a buffer only the newest position resumes.
        journal.set_capacity(0);
        tx.send(event(7)).expect("the journal listens");
        settle(&journal, 7).await;
        let mut at_six = connect(&journal, Some(&id(&journal, 6)));
        assert_eq!(next(&mut at_six).await.id(), None);
        assert_reset(
            &next(&mut at_six).await,
            &id(&journal, 7),
            ResetReason::TooOld,
        );
        let mut at_seven = connect(&journal, Some(&id(&journal, 7)));
        assert_eq!(
            next(&mut at_seven).await.id(),
            Some(id(&journal, 7).as_str())
        );
    }

    #[tokio::test]
    async fn ids_that_cannot_be_resumed_get_one_reset_then_live_events() {
        let (tx, journal) = journal_after(5, DEFAULT_CAPACITY).await;
        let epoch = journal.epoch().to_owned();
        let other = if epoch == "zz" { "yy" } else { "zz" };
        let cases = [
            (format!("{other}-3"), ResetReason::OtherEpoch),
            ("garbage".to_owned(), ResetReason::MalformedId),
            (format!("{epoch}-"), ResetReason::MalformedId),
            (format!("{epoch}-x"), ResetReason::MalformedId),
            (format!("{epoch}--1"), ResetReason::MalformedId),
            (format!("{epoch}-+3"), ResetReason::MalformedId),
            ("-3".to_owned(), ResetReason::MalformedId),
            (format!("{epoch}-3-4"), ResetReason::MalformedId),
            (format!("{epoch}-6"), ResetReason::FutureId),
            (
                format!("{epoch}-99999999999999999999999"),
                ResetReason::FutureId,
            ),
        ];
        let mut clients = Vec::new();
        for (sent, reason) in &cases {
            let mut client = connect(&journal, Some(sent));
            assert_connected(&next(&mut client).await, &journal, None, &id(&journal, 5));
            assert_reset(&next(&mut client).await, &id(&journal, 5), *reason);
            clients.push(client);
        }
        tx.send(event(6)).expect("the journal listens");
        for (client, (sent, _)) in clients.iter_mut().zip(&cases) {
            let e = next(client).await;
            assert_eq!(e.id(), Some(id(&journal, 6).as_str()), "after {sent:?}");
            assert_eq!(runner_of(&e), "r6");
        }
    }

    #[tokio::test]
    async fn a_journal_that_falls_behind_the_engine_resets_clients_before_the_gap() {
        // A small engine channel, filled before the journal's task first runs
        // (a current-thread runtime runs it only when the test yields).
        let (tx, rx) = broadcast::channel(2);
        let journal = Journal::spawn(rx, DEFAULT_CAPACITY);
        let mut client = connect(&journal, None);
        for i in 1..=5 {
            tx.send(event(i)).expect("the journal listens");
        }
        assert_connected(
            &next(&mut client).await,
            &journal,
            Some(&id(&journal, 0)),
            &id(&journal, 0),
        );
        // Events 1 to 3 were lost: their numbers are skipped, not reused.
        assert_reset(&next(&mut client).await, &id(&journal, 3), ResetReason::Gap);
        for i in 4..=5 {
            let e = next(&mut client).await;
            assert_eq!(e.id(), Some(id(&journal, i).as_str()));
            assert_eq!(runner_of(&e), format!("r{i}"));
        }
        settle(&journal, 5).await;
        let mut before_gap = connect(&journal, Some(&id(&journal, 0)));
        assert_eq!(next(&mut before_gap).await.id(), None);
        assert_reset(
            &next(&mut before_gap).await,
            &id(&journal, 5),
            ResetReason::TooOld,
        );
        let mut after_gap = connect(&journal, Some(&id(&journal, 3)));
        assert_eq!(
            next(&mut after_gap).await.id(),
            Some(id(&journal, 3).as_str())
        );
        assert_eq!(
            next(&mut after_gap).await.id(),
            Some(id(&journal, 4).as_str())
        );
        assert_eq!(
            next(&mut after_gap).await.id(),
            Some(id(&journal, 5).as_str())
        );
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_catches_up_from_the_buffer() {
        let (tx, journal) = journal_after(0, DEFAULT_CAPACITY).await;
        let mut client = connect(&journal, None);
        assert_eq!(next(&mut client).await.kind(), CONNECTED);
        let n = u64::try_from(LIVE_CAPACITY).unwrap_or(u64::MAX) + 50;
        for i in 1..=n {
            tx.send(event(i)).expect("the journal listens");
        }
        settle(&journal, n).await;
        // The live feed dropped events for this client; the buffer has them.
        for i in 1..=n {
            let e = next(&mut client).await;
            assert_eq!(e.id(), Some(id(&journal, i).as_str()));
            assert_eq!(runner_of(&e), format!("r{i}"));
        }
        tx.send(event(n + 1)).expect("the journal listens");
        assert_eq!(
            next(&mut client).await.id(),
            Some(id(&journal, n + 1).as_str())
        );
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_further_than_the_buffer_is_reset() {
        let (tx, journal) = journal_after(0, 4).await;
        let mut client = connect(&journal, None);
        assert_eq!(next(&mut client).await.kind(), CONNECTED);
        let n = u64::try_from(LIVE_CAPACITY).unwrap_or(u64::MAX) + 50;
        for i in 1..=n {
            tx.send(event(i)).expect("the journal listens");
        }
        settle(&journal, n).await;
        assert_reset(
            &next(&mut client).await,
            &id(&journal, n),
            ResetReason::Lagged,
        );
        // What the live feed still held is older than the reset: skipped.
        tx.send(event(n + 1)).expect("the journal listens");
        let e = next(&mut client).await;
        assert_eq!(e.id(), Some(id(&journal, n + 1).as_str()));
        assert_eq!(runner_of(&e), format!("r{}", n + 1));
    }

    #[tokio::test]
    async fn streams_end_when_the_engine_events_end_or_the_journal_is_dropped() {
        let (tx, journal) = journal_after(1, DEFAULT_CAPACITY).await;
        let mut client = connect(&journal, Some(&id(&journal, 0)));
        assert_eq!(next(&mut client).await.kind(), CONNECTED);
        drop(tx);
        assert_eq!(next(&mut client).await.id(), Some(id(&journal, 1).as_str()));
        let end = tokio::time::timeout(WITHIN, client.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");

        let (_tx, journal) = journal_after(0, DEFAULT_CAPACITY).await;
        let mut client = connect(&journal, None);
        assert_eq!(next(&mut client).await.kind(), CONNECTED);
        drop(journal);
        let end = tokio::time::timeout(WITHIN, client.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");
    }

    /// Clients that read some events, drop the connection and come back with
    /// their last id, while events keep coming: each sees every event exactly
    /// once, in order, across any number of seams.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_duplicate_and_no_gap_at_the_seam_under_concurrent_events() {
        const EVENTS: u64 = 3000;
        let (tx, rx) = broadcast::channel(8192);
        // A buffer that holds everything: a reset here would be a bug.
        let journal = Arc::new(Journal::spawn(rx, 8192));
        let mut readers = Vec::new();
        for (k, chunk) in [1_usize, 3, 7, 20, 97].into_iter().enumerate() {
            let journal = Arc::clone(&journal);
            // Connected before the first event, so each must see all of them.
            let mut client = connect(&journal, None);
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut reconnects = 0_u32;
                loop {
                    let e = next(&mut client).await;
                    match e.kind() {
                        CONNECTED => continue,
                        RESET => panic!("reader {k} was reset: {e:?}"),
                        _ => {}
                    }
                    let n: u64 = runner_of(&e)[1..].parse().expect("a numbered event");
                    assert_eq!(e.id(), Some(format!("{}-{n}", journal.epoch()).as_str()));
                    seen.push(n);
                    if n == EVENTS {
                        break;
                    }
                    if seen.len() % chunk == 0 {
                        // Drop the connection and resume from the last id.
                        client = connect(&journal, e.id());
                        reconnects += 1;
                    }
                }
                (seen, reconnects)
            }));
        }
        let producer = tokio::spawn(async move {
            for i in 1..=EVENTS {
                tx.send(event(i)).expect("the journal listens");
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            tx
        });
        let _tx = producer.await.expect("producer");
        let expected: Vec<u64> = (1..=EVENTS).collect();
        for reader in readers {
            let (seen, reconnects) = reader.await.expect("reader");
            assert!(reconnects > 0);
            let first_wrong = seen.iter().zip(&expected).position(|(s, e)| s != e);
            assert_eq!(
                first_wrong,
                None,
                "after {reconnects} reconnects the events go {:?}",
                first_wrong.map(|i| &seen[i.saturating_sub(2)..(i + 3).min(seen.len())])
            );
            assert_eq!(seen.len(), expected.len(), "after {reconnects} reconnects");
        }
    }
}
