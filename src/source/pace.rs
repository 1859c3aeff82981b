//! How a watch stream is read: as each chunk arrives, or in rounds when events come slowly.
//!
//! Every chunk the API server sends wakes the reader, and the decode and transform of a few
//! events that follow run on cold caches: at a few hundred events a second that wake-up, not the
//! events, is most of the leader's CPU. So a slow watch is read in rounds: once everything
//! buffered is read, the reader pauses until [`ROUND`] after the round began, and then reads what
//! arrived meanwhile in one go. Capture gathers for a window of the same length anyway, so this
//! adds at most one round to an event's latency and nothing to what is captured.
//!
//! A watch at [`FAST_EVENTS`] per round or more is read as it arrives: pausing it would leave
//! more than the socket comfortably buffers, and there the chunks hold enough events already.
//! A watch that went quiet is waited on without any timer, as before.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::time::Instant;

/// How long a round lasts from when its reading began, pause included.
pub(super) const ROUND: Duration = Duration::from_millis(100);

/// Stream items per [`ROUND`] from which the watch is read as it arrives (about 1,000 a
/// second, ~120 KB of Event JSON buffered per pause at most).
pub(super) const FAST_EVENTS: u32 = 100;

/// How long reading waits for the next item before it counts everything buffered as read.
pub(super) const DRAIN_GAP: Duration = Duration::from_millis(1);

/// How the next item is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Until it comes (bounded only by the watch's idle timeout).
    Block,
    /// At most [`DRAIN_GAP`]; then call [`Pace::caught_up`].
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Items are read as they come; the rate is measured over windows of [`ROUND`].
    Stream,
    /// A round: what is buffered is read until nothing more comes within [`DRAIN_GAP`].
    Drain,
    /// Nothing came in the last round: wait for the next item without a timer.
    Quiet,
}

/// The reading pace of one watch session.
#[derive(Debug)]
pub(super) struct Pace {
    mode: Mode,
    /// Start of the rate measurement: the window's start ([`Mode::Stream`]) or the end of the
    /// previous round ([`Mode::Drain`]).
    since: Instant,
    /// When reading of the current round began (the end of its pause, or its first item).
    began: Instant,
    /// Items read since `since`.
    items: u32,
}

impl Pace {
    /// A session starts as a stream: a watch opened after a relist may be busy.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            mode: Mode::Stream,
            since: now,
            began: now,
            items: 0,
        }
    }

    /// How to wait for the next item.
    pub(super) fn wait(&self) -> Wait {
        match self.mode {
            Mode::Drain => Wait::Drain,
            Mode::Stream | Mode::Quiet => Wait::Block,
        }
    }

    /// An item was read at `now`.
    pub(super) fn read(&mut self, now: Instant) {
        self.items = self.items.saturating_add(1);
        match self.mode {
            Mode::Stream => {
                if now.duration_since(self.since) >= ROUND {
                    if self.items < FAST_EVENTS {
                        // Slow: read what is buffered, then pause. The window stays the
                        // measure of the rate until then.
                        self.mode = Mode::Drain;
                        self.began = now;
                    } else {
                        self.since = now;
                        self.items = 0;
                    }
                }
            }
            Mode::Quiet => {
                self.mode = Mode::Drain;
                self.began = now;
            }
            Mode::Drain => {}
        }
    }

    /// Nothing more came within [`DRAIN_GAP`] at `now`: everything buffered is read. Returns
    /// until when to pause before the next round, if at all.
    pub(super) fn caught_up(&mut self, now: Instant) -> Option<Instant> {
        let elapsed = now.duration_since(self.since);
        let items = self.items;
        self.since = now;
        self.items = 0;
        if items == 0 {
            self.mode = Mode::Quiet;
            return None;
        }
        // At least FAST_EVENTS per ROUND since the previous round ended: read as it comes.
        if u128::from(items) * ROUND.as_micros() >= u128::from(FAST_EVENTS) * elapsed.as_micros() {
            self.mode = Mode::Stream;
            return None;
        }
        let until = self.began + ROUND;
        self.began = until.max(now);
        (until > now).then_some(until)
    }
}

/// The next item of `stream`, read at `pace`: `None` when nothing came for `idle` (a stalled
/// watch), `Some(None)` when the stream ended.
pub(super) async fn next<S>(
    stream: &mut S,
    pace: &mut Pace,
    idle: Duration,
) -> Option<Option<S::Item>>
where
    S: Stream + Unpin,
{
    loop {
        let next = match pace.wait() {
            Wait::Block => tokio::time::timeout(idle, stream.next()).await.ok()?,
            // A drain must give the HTTP client's connection task a turn: it reads the next
            // chunk only once the body has been asked for one, so "nothing ready right now"
            // would end every round after a single chunk.
            Wait::Drain => match tokio::time::timeout(DRAIN_GAP, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if let Some(until) = pace.caught_up(Instant::now()) {
                        tokio::time::sleep_until(until).await;
                    }
                    continue;
                }
            },
        };
        pace.read(Instant::now());
        return Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Reads `n` items at `at`.
    fn read(pace: &mut Pace, at: Instant, n: u32) {
        for _ in 0..n {
            pace.read(at);
        }
    }

    #[test]
    fn a_slow_stream_switches_to_rounds_after_one_window_and_pauses_once_caught_up() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.wait(), Wait::Block);
        // 5 items per 10 ms (500 a second): one window of ROUND, then rounds.
        for tick in 0..10 {
            read(&mut pace, t0 + ms(tick * 10), 5);
            assert_eq!(pace.wait(), Wait::Block, "still measuring at {tick}");
        }
        read(&mut pace, t0 + ms(100), 5);
        assert_eq!(pace.wait(), Wait::Drain, "50 items in a window is slow");
        // Caught up 1 ms later: pause until a round after the round began.
        assert_eq!(pace.caught_up(t0 + ms(101)), Some(t0 + ms(200)));
        // After the pause, the round's 50 items are read in one go.
        read(&mut pace, t0 + ms(200), 50);
        assert_eq!(pace.wait(), Wait::Drain);
        assert_eq!(pace.caught_up(t0 + ms(203)), Some(t0 + ms(300)));
        assert_eq!(pace.wait(), Wait::Drain);
    }

    #[test]
    fn a_fast_stream_is_read_as_it_comes() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        // 20 items per 10 ms (2,000 a second).
        for tick in 0..=30 {
            read(&mut pace, t0 + ms(tick * 10), 20);
            assert_eq!(pace.wait(), Wait::Block, "tick {tick}");
        }
    }

    #[test]
    fn rounds_that_fill_up_switch_back_to_reading_as_it_comes() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        read(&mut pace, t0 + ms(100), 1);
        assert_eq!(pace.wait(), Wait::Drain);
        assert_eq!(pace.caught_up(t0 + ms(101)), Some(t0 + ms(200)));
        // The rate went up: 150 items arrived during the pause.
        read(&mut pace, t0 + ms(200), 150);
        assert_eq!(pace.caught_up(t0 + ms(205)), None);
        assert_eq!(pace.wait(), Wait::Block);
    }

    #[test]
    fn an_empty_round_waits_without_a_timer_and_the_next_item_starts_a_round() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        read(&mut pace, t0 + ms(100), 1);
        assert_eq!(pace.caught_up(t0 + ms(101)), Some(t0 + ms(200)));
        // Nothing arrived during the pause.
        assert_eq!(pace.caught_up(t0 + ms(201)), None);
        assert_eq!(pace.wait(), Wait::Block);
        // An item after a quiet minute: read what came with it, then pause one round.
        let later = t0 + Duration::from_secs(60);
        read(&mut pace, later, 3);
        assert_eq!(pace.wait(), Wait::Drain);
        assert_eq!(pace.caught_up(later + ms(1)), Some(later + ms(100)));
    }

    #[test]
    fn a_round_that_read_past_its_end_does_not_pause() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        read(&mut pace, t0 + ms(100), 1);
        assert_eq!(pace.caught_up(t0 + ms(101)), Some(t0 + ms(200)));
        // A slow reader (capture's channel full): the round's reading ends after its end.
        read(&mut pace, t0 + ms(200), 20);
        assert_eq!(pace.caught_up(t0 + ms(350)), None);
        assert_eq!(pace.wait(), Wait::Drain, "still slow: 20 items in 150 ms");
    }

    /// Items that arrive on a schedule and, like a hyper response body, need one more turn of
    /// the runtime (a pending poll that wakes itself) before each next one is handed over.
    struct Chunked {
        arrivals: std::collections::VecDeque<Instant>,
        sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        asked: bool,
    }

    impl Stream for Chunked {
        type Item = Instant;

        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Instant>> {
            use std::task::Poll;
            let Some(&arrival) = self.arrivals.front() else {
                return Poll::Ready(None);
            };
            if arrival > Instant::now() {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(arrival)));
                sleep.as_mut().reset(arrival);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            if !self.asked {
                self.asked = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.asked = false;
            self.arrivals.pop_front();
            Poll::Ready(Some(arrival))
        }
    }

    use std::future::Future as _;

    /// Reads a stream of `per_tick` items every 10 ms for `seconds`; returns, per item, when it
    /// arrived and when it was read.
    async fn read_stream(per_tick: usize, seconds: u64) -> Vec<(Instant, Instant)> {
        let t0 = Instant::now();
        let arrivals = (0..seconds * 100)
            .flat_map(|tick| std::iter::repeat_n(t0 + ms(tick * 10), per_tick))
            .collect();
        let mut stream = Chunked {
            arrivals,
            sleep: None,
            asked: false,
        };
        let mut pace = Pace::new(t0);
        let mut read = Vec::new();
        while let Some(Some(arrived)) = next(&mut stream, &mut pace, Duration::from_secs(60)).await
        {
            read.push((arrived, Instant::now()));
        }
        read
    }

    /// The longest an item of `read` waited between arriving and being read.
    fn longest_wait(read: &[(Instant, Instant)]) -> Duration {
        read.iter()
            .map(|(arrived, at)| at.duration_since(*arrived))
            .max()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_watch_is_read_in_rounds_that_take_everything_that_arrived() {
        let read = read_stream(5, 3).await;
        assert_eq!(read.len(), 1_500, "every item is read");
        let latest = longest_wait(&read);
        assert!(
            latest <= ROUND + ms(5),
            "an item waited {latest:?}: a round must read all that arrived during its pause"
        );
        // After the first window, one read instant per round instead of one per chunk.
        let mut instants: Vec<Instant> = read.iter().map(|(_, at)| *at).collect();
        instants.dedup_by(|a, b| a.duration_since(*b) <= ms(2));
        assert!(
            instants.len() <= 10 + 3 * 10 + 2,
            "{} read bursts in 3 s (300 chunks)",
            instants.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_watch_is_read_as_each_chunk_arrives() {
        let read = read_stream(20, 2).await;
        assert_eq!(read.len(), 4_000);
        let latest = longest_wait(&read);
        assert!(latest <= ms(2), "an item of a fast watch waited {latest:?}");
    }
}
