//! Generated ids to response text: incremental detokenization, stop ids left out of the text,
//! and stop strings matched on the text (the output ends right before the first match).
//!
//! Text that could still turn into a stop string is held back until it cannot, so a streamed
//! answer never shows a piece of a stop string that the final answer would not contain.

use bitnet_runtime::{StreamDecoder, Tokenizer};

/// What one id added.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    /// Text that is now final (may be empty).
    pub text: String,
    /// A stop string matched: generation should end here.
    pub stopped: bool,
}

/// The text of one answer, built id by id.
#[derive(Debug)]
pub struct TextStream<'t> {
    decoder: StreamDecoder<'t>,
    stop_ids: Vec<u32>,
    stops: Vec<String>,
    /// Everything decoded so far.
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stopped: bool,
}

impl<'t> TextStream<'t> {
    /// `stop_ids` end the answer and are not part of its text; `stops` are stop strings
    /// (empty strings are ignored).
    pub fn new(tokenizer: &'t Tokenizer, stop_ids: Vec<u32>, stops: Vec<String>) -> Self {
        Self {
            decoder: tokenizer.stream_decoder(),
            stop_ids,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a generated id.
    pub fn push(&mut self, id: u32) -> bitnet_runtime::Result<Piece> {
        if self.stopped || self.stop_ids.contains(&id) {
            return Ok(Piece::default());
        }
        if let Some(t) = self.decoder.push(id)? {
            self.text.push_str(&t);
        }
        Ok(self.release(false))
    }

    /// The text still held back, once generation has ended (by length or a stop id).
    pub fn finish(&mut self) -> Piece {
        if self.stopped {
            return Piece::default();
        }
        if let Some(rest) = self.decoder.finish() {
            self.text.push_str(&rest);
        }
        self.release(true)
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn release(&mut self, at_end: bool) -> Piece {
        // A match cannot start before `sent`: any text that could begin one was held back.
        let tail = &self.text[self.sent..];
        let first = self
            .stops
            .iter()
            .filter_map(|s| tail.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let text = tail[..at].to_owned();
            self.sent = self.text.len();
            self.stopped = true;
            return Piece {
                text,
                stopped: true,
            };
        }
        let hold = if at_end { 0 } else { self.held_back(tail) };
        let end = self.text.len() - hold;
        let text = self.text[self.sent..end].to_owned();
        self.sent = end;
        Piece {
            text,
            stopped: false,
        }
    }

    /// Length of the longest end of `tail` that begins some stop string.
    fn held_back(&self, tail: &str) -> usize {
        self.stops
            .iter()
            .flat_map(|s| {
                // Only prefixes no longer than the tail can end it.
                (1..s.len().min(tail.len() + 1))
                    .rev()
                    .filter(|&k| s.is_char_boundary(k) && tail.ends_with(&s[..k]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        Tokenizer::from_file(bitnet_tests::test_tokenizer_path()).unwrap()
    }

    /// Streams `text` through a `TextStream` token by token; returns the pieces and whether
    /// it stopped.
    fn run(t: &Tokenizer, text: &str, stops: &[&str]) -> (Vec<String>, bool) {
        let ids = t.encode(text, false).unwrap();
        let eot = t.eot_id().unwrap();
        let mut s = TextStream::new(t, vec![eot], stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for id in ids {
            let p = s.push(id).unwrap();
            if !p.text.is_empty() {
                out.push(p.text);
            }
            if p.stopped {
                return (out, true);
            }
        }
        let p = s.finish();
        if !p.text.is_empty() {
            out.push(p.text);
        }
        (out, s.stopped())
    }

    #[test]
    fn without_stops_the_text_is_the_decode() {
        let t = tok();
        let text = "Hello there, this is a test of the stream. Ünïcödé ✓ 日本語";
        let (pieces, stopped) = run(&t, text, &[]);
        assert_eq!(pieces.concat(), text);
        assert!(!stopped);
        assert!(pieces.len() > 5, "streamed in pieces: {pieces:?}");
    }

    #[test]
    fn stop_ids_are_not_text() {
        let t = tok();
        let (pieces, _) = run(&t, "one two<|eot_id|>", &[]);
        assert_eq!(pieces.concat(), "one two");
    }

    #[test]
    fn output_ends_before_the_first_stop_string_and_never_shows_part_of_it() {
        let t = tok();
        let (pieces, stopped) = run(&t, "alpha beta gamma delta", &["delta", " gam"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "alpha beta");
        for p in &pieces {
            assert!(!p.contains('g'), "{pieces:?}");
        }
    }

    #[test]
    fn a_stop_string_inside_one_token_and_across_tokens() {
        let t = tok();
        let (pieces, stopped) = run(&t, "The answer is 42. More text", &["2. M"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "The answer is 4");
        let (pieces, stopped) = run(&t, "Hello world", &["ell"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "H");
    }

    #[test]
    fn held_back_text_that_does_not_complete_a_stop_is_released() {
        let t = tok();
        // "wor" starts the stop string "worst" but the text goes another way.
        let (pieces, stopped) = run(&t, "hello world", &["worst"]);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "hello world");
    }
}
