//! `Headers`: the header fields of a parsed head, borrowed from the bytes it was parsed
//! from (`Header` is httparse's `name`/`value` pair of slices). Up to [`INLINE_FIELDS`]
//! live inside the head itself, so parsing a head of a usual size touches no allocator;
//! a larger head spills them into one Vec.

use std::fmt;
use std::ops::Deref;

/// One header field, borrowed from the buffer it was parsed from: the name as received
/// (case preserved), the value without its surrounding whitespace.
pub use httparse::Header;

/// Fields kept inline. Browsers send 10-20 request fields; a CDN's response carries
/// 10-25. A head with more costs one allocation, whatever its size.
pub const INLINE_FIELDS: usize = 32;

/// The fields of one head, in order. Reads as a slice (`&[Header]`).
#[derive(Clone)]
pub struct Headers<'a> {
    inline: [Header<'a>; INLINE_FIELDS],
    len: usize,
    /// All of the fields, when there are more than fit inline (else empty).
    spilled: Vec<Header<'a>>,
}

impl<'a> Headers<'a> {
    /// Copies the fields httparse found (slices into the head's buffer).
    pub fn from_parsed(fields: &[Header<'a>]) -> Headers<'a> {
        let mut headers = Headers { inline: [httparse::EMPTY_HEADER; INLINE_FIELDS], len: 0, spilled: Vec::new() };
        match headers.inline.get_mut(..fields.len()) {
            Some(inline) => {
                inline.copy_from_slice(fields);
                headers.len = fields.len();
            }
            None => headers.spilled = fields.to_vec(),
        }
        headers
    }
}

impl<'a> Deref for Headers<'a> {
    type Target = [Header<'a>];

    fn deref(&self) -> &[Header<'a>] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl PartialEq for Headers<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("X-{i}"), i.to_string())).collect()
    }

    #[test]
    fn reads_back_what_it_was_given() {
        for n in [0, 1, INLINE_FIELDS - 1, INLINE_FIELDS, INLINE_FIELDS + 1, 200] {
            let owned = fields(n);
            let parsed: Vec<Header<'_>> =
                owned.iter().map(|(k, v)| Header { name: k.as_str(), value: v.as_bytes() }).collect();
            let headers = Headers::from_parsed(&parsed);
            assert_eq!(&*headers, &parsed[..], "{n} fields");
            assert_eq!(headers.len(), n);
            assert_eq!(headers.clone(), headers);
        }
    }
}
