//! Feeds arbitrary bytes to the stream parser in two chunks (the first byte picks the
//! split point) with small limits, so that every limit is reachable by short inputs.
//! Besides not panicking, the parser must stay within its memory bound and stay dead
//! after an error.

#![no_main]

use herald_xml::{Limits, StreamParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_stanza_bytes: 512,
        max_depth: 8,
        max_attrs: 8,
        max_name_len: 32,
    };
    let at = (split as usize * data.len()) / 255;
    let (a, b) = data.split_at(at.min(data.len()));
    let mut parser = StreamParser::new(limits);
    for chunk in [a, b] {
        parser.feed(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => {
                    assert!(parser.buffered() <= limits.max_stanza_bytes);
                    break;
                }
                Err(e) => {
                    assert_eq!(parser.next_event(), Err(e));
                    return;
                }
            }
        }
    }
});
