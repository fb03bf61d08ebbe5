//! Test-only: small random edits of valid inputs, for the parsers' property tests
//! (`proptest` shrinks a failure to the fewest edits that still break).

use proptest::prelude::*;
use proptest::sample::{select, Index};

/// One edit at a position chosen relative to the current length.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    /// Keeps a prefix: the bytes received so far.
    Truncate(Index),
}

/// One of `seeds` with one to four edits: a byte replaced or inserted (taken from
/// `alphabet`) or removed, or the rest cut off (a head or body still arriving).
pub(crate) fn mutated(seeds: &'static [&'static [u8]], alphabet: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let byte = select(alphabet);
    let edit = prop_oneof![
        3 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        3 => (any::<Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        3 => any::<Index>().prop_map(Edit::Remove),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ];
    (select(seeds), prop::collection::vec(edit, 1..=4)).prop_map(|(seed, edits)| {
        let mut buf = seed.to_vec();
        for edit in edits {
            match edit {
                Edit::Insert(i, b) => buf.insert(i.index(buf.len() + 1), b),
                _ if buf.is_empty() => {}
                Edit::Replace(i, b) => {
                    let at = i.index(buf.len());
                    buf[at] = b;
                }
                Edit::Remove(i) => {
                    buf.remove(i.index(buf.len()));
                }
                Edit::Truncate(i) => buf.truncate(i.index(buf.len())),
            }
        }
        buf
    })
}

/// Cases per property: the three parser properties together stay well under 5 s in a
/// debug build.
pub(crate) const CASES: u32 = 10_000;
