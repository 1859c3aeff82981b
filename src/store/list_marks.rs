//! How far each unfinished LIST got, so that listing again after a crash drops what was already
//! captured without a dedupe entry per listed event.
//!
//! A LIST with `limit`/`continue` is a consistent snapshot at the list's resourceVersion `L`,
//! returned in storage key order (`namespace/name`, compared as bytes: a continue token resumes
//! after the last key returned). Once every item up to key `K` is captured, the mark `(L, K)`
//! says: an item of a later list with a resourceVersion at or below `L` and a key at or below
//! `K` is the version snapshot `L` held at that key (no write touched the object since), so it
//! was captured. The marks are written in the capture transaction of the items they cover and
//! only while the store has no checkpoint (a first list, or one after the checkpoint was
//! forgotten); the checkpoint that ends the list replaces them.
//!
//! A list whose keys do not rise is not trusted: its mark is poisoned (covers nothing from then
//! on) and its remaining items get dedupe entries. What it covered before can then be captured
//! again after a crash: a duplicate, never a loss.

/// At most this many marks are kept; the lowest list goes first (its items may then be captured
/// again after a crash, a duplicate, never a loss). Each crash during a first list adds one.
const MAX_MARKS: usize = 8;

/// One list's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    /// The list's resourceVersion.
    list: u64,
    /// Which run of a list this is (random): a list restarted at the same resourceVersion
    /// is another run, and the earlier run's mark covers it.
    run: u64,
    /// The highest key captured, or `None` once the list's order could not be trusted.
    key: Option<Vec<u8>>,
}

/// The marks of unfinished lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ListMarks {
    marks: Vec<Mark>,
}

/// What [`ListMarks::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Advance {
    /// The mark now covers the item: it needs no dedupe entry.
    Covered,
    /// The item's key did not rise above the mark's: the mark is poisoned now, and the item
    /// needs a dedupe entry.
    Poisoned,
    /// The list's mark was poisoned before: the item needs a dedupe entry.
    Unordered,
}

impl ListMarks {
    /// True when an item at `rv` and `key` of the list run `(list, run)` was captured under
    /// another run's mark. A run's own mark never covers its items: a list returns each key
    /// once, so an item below its own mark is out of order, not a repeat.
    pub(super) fn covers(&self, rv: u64, key: &[u8], list: u64, run: u64) -> bool {
        self.marks.iter().any(|mark| {
            (mark.list, mark.run) != (list, run)
                && rv <= mark.list
                && mark.key.as_deref().is_some_and(|covered| key <= covered)
        })
    }

    /// Records that the item at `key` of the list run `(list, run)` is captured.
    pub(super) fn advance(&mut self, list: u64, run: u64, key: &[u8]) -> Advance {
        if let Some(mark) = self
            .marks
            .iter_mut()
            .find(|mark| (mark.list, mark.run) == (list, run))
        {
            return match &mark.key {
                Some(covered) if key > covered.as_slice() => {
                    mark.key = Some(key.to_vec());
                    self.drop_subsumed(list, run);
                    Advance::Covered
                }
                Some(_) => {
                    mark.key = None;
                    Advance::Poisoned
                }
                None => Advance::Unordered,
            };
        }
        self.marks.push(Mark {
            list,
            run,
            key: Some(key.to_vec()),
        });
        self.drop_subsumed(list, run);
        if self.marks.len() > MAX_MARKS {
            let lowest = self
                .marks
                .iter()
                .enumerate()
                .min_by_key(|(_, mark)| mark.list)
                .map(|(index, _)| index);
            if let Some(index) = lowest {
                self.marks.remove(index);
            }
        }
        Advance::Covered
    }

    /// Drops the marks the mark of `(list, run)` covers entirely (lower or same list, lower or
    /// equal key).
    fn drop_subsumed(&mut self, list: u64, run: u64) {
        let Some(key) = self
            .marks
            .iter()
            .find(|mark| (mark.list, mark.run) == (list, run))
            .and_then(|mark| mark.key.clone())
        else {
            return;
        };
        self.marks.retain(|mark| {
            (mark.list, mark.run) == (list, run)
                || !(mark.list <= list && mark.key.as_deref().is_some_and(|k| k <= key.as_slice()))
        });
    }

    /// True when no mark is held.
    pub(super) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Encoding: per mark, the list and the run (u64 BE each), then `0` for a poisoned mark or
    /// `1`, the key's length (u32 BE) and the key.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for mark in &self.marks {
            out.extend_from_slice(&mark.list.to_be_bytes());
            out.extend_from_slice(&mark.run.to_be_bytes());
            match &mark.key {
                None => out.push(0),
                Some(key) => {
                    out.push(1);
                    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&key[..len as usize]);
                }
            }
        }
        out
    }

    /// The inverse of [`ListMarks::encode`]; `None` when `raw` is malformed.
    pub(super) fn decode(mut raw: &[u8]) -> Option<Self> {
        let mut marks = Vec::new();
        while !raw.is_empty() {
            let (list, rest) = raw.split_at_checked(8)?;
            let list = u64::from_be_bytes(list.try_into().ok()?);
            let (run, rest) = rest.split_at_checked(8)?;
            let run = u64::from_be_bytes(run.try_into().ok()?);
            let (&flag, rest) = rest.split_first()?;
            let (key, rest) = match flag {
                0 => (None, rest),
                1 => {
                    let (len, rest) = rest.split_at_checked(4)?;
                    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
                    let (key, rest) = rest.split_at_checked(len)?;
                    (Some(key.to_vec()), rest)
                }
                _ => return None,
            };
            marks.push(Mark { list, run, key });
            raw = rest;
        }
        Some(Self { marks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later list (resourceVersion 200, run 9) asks.
    fn later(marks: &ListMarks, rv: u64, key: &[u8]) -> bool {
        marks.covers(rv, key, 200, 9)
    }

    #[test]
    fn a_mark_covers_versions_at_or_below_its_list_and_keys_up_to_its_key() {
        let mut marks = ListMarks::default();
        assert!(!later(&marks, 5, b"a/x"));
        assert_eq!(marks.advance(100, 1, b"ns/b"), Advance::Covered);
        assert!(later(&marks, 100, b"ns/b"));
        assert!(later(&marks, 7, b"ns/a"));
        assert!(!later(&marks, 101, b"ns/a"), "written after the snapshot");
        assert!(!later(&marks, 7, b"ns/c"), "not reached by the list");
        assert_eq!(marks.advance(100, 1, b"ns/c"), Advance::Covered);
        assert!(later(&marks, 50, b"ns/bz"));
    }

    #[test]
    fn a_run_is_covered_by_another_run_of_the_same_list_but_never_by_its_own_mark() {
        let mut marks = ListMarks::default();
        marks.advance(100, 1, b"ns/m");
        assert!(
            !marks.covers(10, b"ns/c", 100, 1),
            "out of order, not a repeat"
        );
        assert!(
            marks.covers(10, b"ns/c", 100, 2),
            "the same snapshot, listed again"
        );
    }

    #[test]
    fn keys_that_do_not_rise_poison_the_mark() {
        let mut marks = ListMarks::default();
        marks.advance(100, 1, b"ns/m");
        assert_eq!(marks.advance(100, 1, b"ns/c"), Advance::Poisoned);
        assert!(!later(&marks, 1, b"ns/a"), "a poisoned mark covers nothing");
        assert_eq!(marks.advance(100, 1, b"ns/z"), Advance::Unordered);
        assert!(!later(&marks, 1, b"ns/z"));
        // Repeating the same key is not a rise either.
        let mut marks = ListMarks::default();
        marks.advance(100, 1, b"ns/m");
        assert_eq!(marks.advance(100, 1, b"ns/m"), Advance::Poisoned);
    }

    #[test]
    fn a_later_list_past_an_earlier_mark_replaces_it_and_both_cover_until_then() {
        let mut marks = ListMarks::default();
        marks.advance(100, 1, b"ns/m");
        marks.advance(200, 2, b"ns/c");
        let third = |marks: &ListMarks, rv, key| marks.covers(rv, key, 300, 3);
        assert!(third(&marks, 90, b"ns/k"), "still the first list's");
        assert!(third(&marks, 150, b"ns/b"), "the second list's");
        assert!(!third(&marks, 150, b"ns/k"));
        marks.advance(200, 2, b"ns/n");
        assert_eq!(marks.marks.len(), 1, "the first mark is subsumed");
        assert!(third(&marks, 90, b"ns/k"));
    }

    #[test]
    fn marks_round_trip_and_malformed_bytes_are_refused() {
        let mut marks = ListMarks::default();
        marks.advance(100, 1, b"ns/m");
        marks.advance(200, 2, b"ns/c");
        marks.advance(300, 3, b"a/x");
        marks.advance(300, 3, b"a/a");
        let raw = marks.encode();
        assert_eq!(ListMarks::decode(&raw), Some(marks));
        assert_eq!(ListMarks::decode(&raw[..raw.len() - 1]), None);
        assert_eq!(ListMarks::decode(&[0; 16]), None, "no flag");
        assert_eq!(ListMarks::decode(&[]), Some(ListMarks::default()));
    }

    #[test]
    fn at_most_max_marks_are_kept_and_the_lowest_list_goes_first() {
        let mut marks = ListMarks::default();
        for list in 1..=(MAX_MARKS as u64 + 2) {
            // Falling keys: no later list subsumes an earlier one.
            let key = format!("ns/{}", char::from(b'z' - u8::try_from(list).unwrap()));
            marks.advance(list, list, key.as_bytes());
        }
        assert_eq!(marks.marks.len(), MAX_MARKS);
        assert!(marks.marks.iter().all(|mark| mark.list > 2));
    }
}
