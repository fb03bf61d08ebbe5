//! The structure of a client's HPACK field block (RFC 7541 §6), walked as its bytes go by
//! (nothing is buffered), for the two rules the `h2` crate does not answer as RFC 9113
//! asks: a block that does not decode is a connection error of type COMPRESSION_ERROR
//! (§4.3; `h2` says PROTOCOL_ERROR), and a trailer block must carry no pseudo-header
//! field (§8.1; `h2` drops them silently).
//!
//! Only the structure is walked: representations, integers and string lengths. The
//! dynamic table is `h2`'s; a pseudo-header field is seen when the block names it by a
//! static-table index or spells a new name that starts with `:` (plain or Huffman-coded).
//! A trailer that reuses a dynamic entry holding a pseudo-header is not seen here; `h2`
//! drops such fields, so none ever reaches an origin.

/// What the walk found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The block does not decode: COMPRESSION_ERROR.
    Malformed,
    /// A trailer block names a pseudo-header field: the message is malformed.
    PseudoInTrailer,
}

/// Static-table entries 1..=14 are the pseudo-header fields (RFC 7541 Appendix A).
const LAST_PSEUDO_INDEX: u64 = 14;
/// The Huffman code of `:` (RFC 7541 Appendix B): 7 bits, 1011100.
const HUFFMAN_COLON: u8 = 0b101_1100;
/// Integers longer than this many continuation bytes overflow any sane limit.
const MAX_INT_SHIFT: u32 = 28;

/// What a finished integer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntMeaning {
    /// The index of an indexed field line (never 0).
    Indexed,
    /// The name index of a literal field line (0: a new name follows).
    NameIndex,
    /// A dynamic table size update.
    SizeUpdate,
    /// A string's length; `name`: the string is a field name.
    StringLength { name: bool, huffman: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// At a field line boundary (the only place a block may end).
    Line,
    /// Continuation bytes of a prefixed integer.
    Int { meaning: IntMeaning, value: u64, shift: u32 },
    /// The first byte of a string (Huffman flag and length prefix).
    StringHead { name: bool },
    /// String bytes still to pass; `first`: the next byte is the string's first.
    String { left: u64, name: bool, huffman: bool, first: bool },
}

/// The walk over one field block (a HEADERS frame's fragment and its CONTINUATIONs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockWalk {
    step: Step,
    trailer: bool,
}

impl BlockWalk {
    /// A new block; `trailer`: it is a trailer section (no pseudo-header fields).
    pub fn new(trailer: bool) -> BlockWalk {
        BlockWalk { step: Step::Line, trailer }
    }

    /// The next bytes of the block.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), BlockError> {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.step {
                Step::String { left, name, huffman, first } => {
                    if first && name && self.trailer && starts_with_colon(b, huffman) {
                        return Err(BlockError::PseudoInTrailer);
                    }
                    let n = (left.min(bytes.len() as u64)) as usize;
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.step = if left > 0 {
                        Step::String { left, name, huffman, first: false }
                    } else if name {
                        Step::StringHead { name: false }
                    } else {
                        Step::Line
                    };
                    continue;
                }
                Step::Line => self.line_start(b)?,
                Step::StringHead { name } => {
                    let huffman = b & 0x80 != 0;
                    self.int_start(b, 7, IntMeaning::StringLength { name, huffman })?;
                }
                Step::Int { meaning, value, shift } => {
                    let value = value + (u64::from(b & 0x7f) << shift);
                    if b & 0x80 == 0 {
                        self.int_done(meaning, value)?;
                    } else if shift + 7 > MAX_INT_SHIFT {
                        return Err(BlockError::Malformed);
                    } else {
                        self.step = Step::Int { meaning, value, shift: shift + 7 };
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The block ended (END_HEADERS): it must end on a field line boundary.
    pub fn finish(&self) -> Result<(), BlockError> {
        match self.step {
            Step::Line => Ok(()),
            _ => Err(BlockError::Malformed),
        }
    }

    fn line_start(&mut self, b: u8) -> Result<(), BlockError> {
        if b & 0x80 != 0 {
            self.int_start(b, 7, IntMeaning::Indexed)
        } else if b & 0x40 != 0 {
            self.int_start(b, 6, IntMeaning::NameIndex)
        } else if b & 0x20 != 0 {
            self.int_start(b, 5, IntMeaning::SizeUpdate)
        } else {
            // Without indexing (0000) or never indexed (0001): a 4-bit name index.
            self.int_start(b, 4, IntMeaning::NameIndex)
        }
    }

    fn int_start(&mut self, b: u8, prefix_bits: u32, meaning: IntMeaning) -> Result<(), BlockError> {
        let mask = (1u8 << prefix_bits) - 1;
        let value = b & mask;
        if value < mask {
            self.int_done(meaning, u64::from(value))
        } else {
            self.step = Step::Int { meaning, value: u64::from(mask), shift: 0 };
            Ok(())
        }
    }

    fn int_done(&mut self, meaning: IntMeaning, value: u64) -> Result<(), BlockError> {
        let pseudo = self.trailer && (1..=LAST_PSEUDO_INDEX).contains(&value);
        self.step = match meaning {
            IntMeaning::Indexed if value == 0 => return Err(BlockError::Malformed),
            IntMeaning::Indexed | IntMeaning::NameIndex if pseudo => return Err(BlockError::PseudoInTrailer),
            IntMeaning::Indexed | IntMeaning::SizeUpdate => Step::Line,
            IntMeaning::NameIndex => Step::StringHead { name: value == 0 },
            IntMeaning::StringLength { name, .. } if value == 0 => {
                if name {
                    Step::StringHead { name: false }
                } else {
                    Step::Line
                }
            }
            IntMeaning::StringLength { name, huffman } => Step::String { left: value, name, huffman, first: true },
        };
        Ok(())
    }
}

/// True when a name whose first byte is `b` starts with `:`.
fn starts_with_colon(b: u8, huffman: bool) -> bool {
    if huffman {
        b >> 1 == HUFFMAN_COLON
    } else {
        b == b':'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(block: &[u8], trailer: bool) -> Result<(), BlockError> {
        let mut w = BlockWalk::new(trailer);
        w.feed(block)?;
        w.finish()
    }

    /// A request block as clients send it: indexed statics, a literal with an indexed
    /// name (incremental indexing), a literal with a new Huffman-coded name, never indexed.
    fn request_block() -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
        b.extend([0x41, 0x0b]); // :authority, literal value of 11 bytes
        b.extend(b"example.com");
        b.extend([0x40, 0x85, 0xf2, 0xb1, 0x0f, 0x52, 0x4b, 0x03]); // new name "x-id"-ish (huffman), value
        b.extend(b"abc");
        b.extend([0x10, 0x01, b'k', 0x01, b'v']); // never indexed, new name "k": "v"
        b.extend([0x3f, 0xe1, 0x1f]); // size update 4096
        b.extend([0xbe]); // dynamic index 62
        b
    }

    #[test]
    fn a_well_formed_block_passes_whole_and_byte_by_byte() {
        let block = request_block();
        assert_eq!(walk(&block, false), Ok(()));
        let mut w = BlockWalk::new(false);
        for b in block.chunks(1) {
            assert_eq!(w.feed(b), Ok(()));
        }
        assert_eq!(w.finish(), Ok(()));
    }

    #[test]
    fn a_block_cut_short_or_with_index_zero_is_malformed() {
        // The conformance suite's case: a literal with incremental indexing and nothing after.
        assert_eq!(walk(b"\x40", false), Err(BlockError::Malformed));
        assert_eq!(walk(b"\x41\x05abc", false), Err(BlockError::Malformed), "value shorter than its length");
        assert_eq!(walk(b"\x80", false), Err(BlockError::Malformed), "indexed field line 0");
        assert_eq!(walk(b"\xff\xff\xff\xff\xff\xff\x01", false), Err(BlockError::Malformed), "integer overflow");
    }

    #[test]
    fn a_trailer_naming_a_pseudo_header_is_found_in_every_spelling() {
        assert_eq!(walk(b"\x83", true), Err(BlockError::PseudoInTrailer), "indexed :method POST");
        assert_eq!(walk(b"\x42\x04POST", true), Err(BlockError::PseudoInTrailer), "literal, indexed name :method");
        assert_eq!(walk(b"\x02\x04POST", true), Err(BlockError::PseudoInTrailer), "without indexing, :method");
        assert_eq!(walk(b"\x40\x07:method\x04POST", true), Err(BlockError::PseudoInTrailer), "new plain name");
        // ":m" Huffman-coded: ':' = 1011100, 'm' = 101001 → 1011100 101001 + padding 1s.
        assert_eq!(walk(&[0x40, 0x82, 0xb9, 0x4f, 0x01, b'x'], true), Err(BlockError::PseudoInTrailer));
        assert_eq!(walk(b"\x40\x06x-test\x02ok", true), Ok(()), "an ordinary trailer");
        assert_eq!(walk(b"\x83", false), Ok(()), "pseudo-headers are fine in a request's head");
    }
}
