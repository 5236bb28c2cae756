//! Chat formatting (BitNet 2B-4T template): System/User/Assistant turns.
//!
//! The model's Hugging Face chat template, verbatim:
//!
//! ```jinja
//! {% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}
//! ```
//!
//! with BOS first, so a one-question prompt reads
//! `<|begin_of_text|>User: Hey, are you conscious?<|eot_id|>Assistant: `.
//!
//! BOS is written into the text by [`format_chat`], and encoded with the rest: the text encoded
//! with `add_bos = false` gives the model's ids, and [`Tokenizer::encode`] never adds a second
//! BOS in front of a leading `<|begin_of_text|>`, so the prompt gets exactly one either way.
//!
//! Special-token text inside a message (a user typing `<|eot_id|>`) becomes the special id, as it
//! does with the Hugging Face template; callers serving untrusted users should be aware of it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::tokenizer::{BOS_TOKEN, EOT_TOKEN, Tokenizer};

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions for the assistant, usually the first turn.
    System,
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role as the template writes it (Jinja's `capitalize` of `system`/`user`/`assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Parses the OpenAI/HF role names (`system`, `user`, `assistant`), in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            _ => Err(Error::InvalidRequest(format!(
                "unknown chat role {s:?} (expected system, user or assistant)"
            ))),
        }
    }
}

/// One turn of a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said; surrounding whitespace is trimmed when formatted.
    pub content: String,
}

impl Message {
    /// A turn of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Jinja's `trim` is Python's `str.strip()`, whose whitespace is Unicode `White_Space` (Rust's)
/// plus the separators U+001C..U+001F; match it exactly so prompts equal the template's.
fn jinja_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The prompt text of `messages` per the 2B-4T chat template, `<|begin_of_text|>` first; with
/// `add_generation_prompt` it ends in `Assistant: ` for the model to answer.
///
/// Encode it with [`Tokenizer::encode`] (either `add_bos`: BOS is not doubled), or use
/// [`encode_chat`].
pub fn format_chat(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::from(BOS_TOKEN);
    for m in messages {
        out.push_str(m.role.as_str());
        out.push_str(": ");
        out.push_str(jinja_trim(&m.content));
        out.push_str(EOT_TOKEN);
    }
    if add_generation_prompt {
        // The trailing space is part of the template; it encodes as its own id (220 in Llama 3).
        out.push_str("Assistant: ");
    }
    out
}

/// The prompt ids of `messages` ([`format_chat`] encoded, exactly one BOS).
pub fn encode_chat(
    tokenizer: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    tokenizer.encode(&format_chat(messages, add_generation_prompt), false)
}

/// The turns of a multi-turn chat, for a REPL: push the user's input, generate from
/// [`prompt_ids`](Self::prompt_ids), push the reply, repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    messages: Vec<Message>,
}

impl Conversation {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// A conversation that starts with a system turn.
    pub fn with_system(content: impl Into<String>) -> Self {
        Self {
            messages: vec![Message::system(content)],
        }
    }

    /// Appends a turn.
    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// Appends a user turn.
    pub fn push_user(&mut self, content: impl Into<String>) {
        self.push(Message::user(content));
    }

    /// Appends an assistant turn (the model's reply, without its stop token).
    pub fn push_assistant(&mut self, content: impl Into<String>) {
        self.push(Message::assistant(content));
    }

    /// The turns so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Number of turns.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there are no turns.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Forgets the exchange but keeps the system turns, as a REPL's reset does.
    pub fn clear(&mut self) {
        self.messages.retain(|m| m.role == Role::System);
    }

    /// The prompt text for the model's next turn (ends in `Assistant: `).
    pub fn prompt(&self) -> String {
        format_chat(&self.messages, true)
    }

    /// The prompt ids for the model's next turn.
    pub fn prompt_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        encode_chat(tokenizer, &self.messages, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_matches_the_golden_prompt_text() {
        let text = format_chat(
            &[Message::user("Hey, are you conscious? Can you talk to me?")],
            true,
        );
        assert_eq!(
            text,
            "<|begin_of_text|>User: Hey, are you conscious? Can you talk to me?<|eot_id|>Assistant: "
        );
    }

    #[test]
    fn all_roles_are_capitalized_and_content_trimmed() {
        let text = format_chat(
            &[
                Message::system("  You are a helpful assistant.\n"),
                Message::user("\tHi "),
                Message::assistant("Hello!  "),
                Message::user("\u{1f}bye\u{3000}"),
            ],
            false,
        );
        assert_eq!(
            text,
            "<|begin_of_text|>System: You are a helpful assistant.<|eot_id|>User: Hi<|eot_id|>\
             Assistant: Hello!<|eot_id|>User: bye<|eot_id|>"
        );
    }

    #[test]
    fn inner_whitespace_is_kept() {
        let text = format_chat(&[Message::user(" a\n\n b  c ")], false);
        assert_eq!(text, "<|begin_of_text|>User: a\n\n b  c<|eot_id|>");
    }

    #[test]
    fn no_messages() {
        assert_eq!(format_chat(&[], false), "<|begin_of_text|>");
        assert_eq!(format_chat(&[], true), "<|begin_of_text|>Assistant: ");
    }

    #[test]
    fn conversation_accumulates_turns() {
        let mut c = Conversation::with_system("Be brief.");
        c.push_user("Hi");
        assert_eq!(
            c.prompt(),
            "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: "
        );
        c.push_assistant("Hello.");
        c.push_user("Bye");
        assert_eq!(
            c.prompt(),
            "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>\
             Assistant: Hello.<|eot_id|>User: Bye<|eot_id|>Assistant: "
        );
        assert_eq!(c.len(), 4);
        c.clear();
        assert_eq!(c.messages(), &[Message::system("Be brief.")]);
        assert!(!c.is_empty());
    }

    #[test]
    fn roles_parse() {
        assert_eq!("user".parse::<Role>().unwrap(), Role::User);
        assert_eq!("System".parse::<Role>().unwrap(), Role::System);
        assert_eq!("ASSISTANT".parse::<Role>().unwrap(), Role::Assistant);
        assert!("tool".parse::<Role>().is_err());
        assert_eq!(Role::Assistant.to_string(), "Assistant");
    }
}
