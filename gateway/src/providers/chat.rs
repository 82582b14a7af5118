//! The gateway's own model of a chat exchange, between the client's wire format and the
//! provider's: a request, a whole response, and the events of a stream. Every adapter maps
//! to and from these, so N client formats and M provider formats need N + M adapters.

use serde_json::{Map, Value};

/// A chat request, as far as translation needs to understand it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// System instructions, joined in order.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// OpenAI's `stream_options.include_usage`: the client wants a final usage chunk.
    pub include_usage: bool,
    pub tools: Vec<Tool>,
    /// OpenAI's `tool_choice` as given (`"auto"`, `"none"`, `"required"`, or a function).
    pub tool_choice: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// The result of a tool call, answering `tool_call_id`.
    Tool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
    /// Calls the assistant made in this turn.
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: which call this answers.
    pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// An image by URL, or a `data:` URL with the bytes inline.
    Image {
        url: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text, as OpenAI carries them.
    pub arguments: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

pub use tollgate_plugins::Usage;

/// A whole (non-stream) answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// One step of a streamed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// The answer begins.
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A tool call begins; `index` numbers the calls of this answer from 0.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    Finish(FinishReason),
    /// Usage so far (cumulative: the last one counts).
    Usage(Usage),
    /// The provider reported an error mid-stream.
    Error {
        message: String,
    },
}

/// Reads a JSON field as a string, empty when absent.
pub fn str_field<'a>(object: &'a Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}
