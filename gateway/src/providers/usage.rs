//! Usage counting beside the chat model: what an answer has said about its tokens so far
//! (the provider's reports, else the text it generated), settled into the usage to bill.

use super::chat::{StreamEvent, Usage};
use super::Wire;
use crate::catalog::Tokenizer;
use crate::tokens::{self, PromptSize, Sample};

/// Generated text kept for an estimate: beyond it, the count is extrapolated.
const MAX_GENERATED_SAMPLE: usize = 1024 * 1024;

/// What an answer has said about its usage so far.
#[derive(Debug)]
pub struct UsageCounter {
    reported: Option<Usage>,
    /// The provider's prompt count, reported before its final count (Anthropic's
    /// `message_start`): used when the answer ends without the final one.
    prompt: Option<Usage>,
    /// Text and tool-call arguments generated so far, for an estimate when no usage comes.
    generated: Sample,
    /// The provider never reports usage (Triton): its figures are the gateway's own count.
    estimated_by_adapter: bool,
}

impl Default for UsageCounter {
    fn default() -> UsageCounter {
        UsageCounter {
            reported: None,
            prompt: None,
            generated: Sample::new(MAX_GENERATED_SAMPLE),
            estimated_by_adapter: false,
        }
    }
}

impl UsageCounter {
    /// A counter for answers in `wire`: its figures are estimates when the wire carries no
    /// usage of the provider's own (the adapter counts).
    pub fn for_wire(wire: Wire) -> UsageCounter {
        UsageCounter {
            estimated_by_adapter: !wire.reports_usage(),
            ..UsageCounter::default()
        }
    }

    pub fn observe(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Usage(usage) => self.report(*usage),
            // Once the provider has counted, its figures are the truth; keep no text.
            StreamEvent::Text(text) if self.reported.is_none() => self.generated.push(text),
            StreamEvent::ToolCallArguments { fragment, .. } if self.reported.is_none() => {
                self.generated.push(fragment)
            }
            _ => {}
        }
    }

    /// Usage is cumulative: the last report counts.
    pub fn report(&mut self, usage: Usage) {
        self.reported = Some(usage);
        self.generated = Sample::new(MAX_GENERATED_SAMPLE);
    }

    /// The prompt's count from the provider, its output not final yet.
    pub fn report_prompt(&mut self, usage: Usage) {
        self.prompt = Some(usage);
    }

    /// Bytes `settle` may have to count: more than `tokens::INLINE_BYTES` belongs on the
    /// counting pool.
    pub fn settle_cost(&self, request_body: &[u8]) -> usize {
        match self.reported {
            Some(_) => 0,
            None => {
                let prompt = if self.prompt.is_some() {
                    0
                } else {
                    request_body.len()
                };
                prompt + self.generated.len().min(MAX_GENERATED_SAMPLE)
            }
        }
    }

    /// As `settle`, with lengths in place of the tokenizer, for where counting is no option.
    pub fn settle_by_length(&self, request_body_len: usize) -> (Usage, bool) {
        match self.reported {
            Some(usage) => (usage, self.estimated_by_adapter),
            None => {
                let prompt = self.prompt.unwrap_or(Usage {
                    input: tokens::by_length(request_body_len),
                    ..Usage::default()
                });
                (
                    Usage {
                        output: tokens::by_length(self.generated.len()),
                        ..prompt
                    },
                    true,
                )
            }
        }
    }

    /// The usage to bill: the provider's report, else an estimate of the prompt (counted
    /// from the request body) and of what was generated.
    pub fn settle(&self, request_body: &[u8], tokenizer: Tokenizer) -> (Usage, bool) {
        if let Some(usage) = self.reported {
            return (usage, self.estimated_by_adapter);
        }
        let prompt = self.prompt.unwrap_or_else(|| Usage {
            input: PromptSize::from_body(request_body).map_or(0, |p| p.exact(tokenizer)),
            ..Usage::default()
        });
        (
            Usage {
                output: self.generated.count(tokenizer),
                ..prompt
            },
            true,
        )
    }
}
