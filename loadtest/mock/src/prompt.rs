//! What the mock reads out of prompts: how much text they hold, for token
//! estimates, and whether they ask for the canned tool call.

use serde::Deserialize;

/// Message content as OpenAI and Anthropic send it: a string, or typed
/// parts of which only text parts count.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part (OpenAI, Anthropic) or Gemini part. Images, tool
/// results and function responses have no `text` and count as nothing.
#[derive(Deserialize)]
pub(crate) struct Part {
    text: Option<String>,
}

impl Content {
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        let (whole, parts) = match self {
            Content::Text(t) => (Some(t.as_str()), &[][..]),
            Content::Parts(parts) => (None, parts.as_slice()),
        };
        whole.into_iter().chain(part_texts(parts))
    }

    pub(crate) fn text_bytes(&self) -> usize {
        self.texts().map(str::len).sum()
    }
}

pub(crate) fn part_texts(parts: &[Part]) -> impl Iterator<Item = &str> {
    parts.iter().filter_map(|p| p.text.as_deref())
}

/// Whether the texts mention the weather: the deterministic trigger that
/// makes a request offering tools get the canned tool call.
pub(crate) fn asks_about_weather<'a>(texts: impl IntoIterator<Item = &'a str>) -> bool {
    texts.into_iter().any(|text| {
        text.split(|c: char| !c.is_alphanumeric())
            .any(|word| word.eq_ignore_ascii_case("weather"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_texts() {
        let parse = |s: &str| serde_json::from_str::<Content>(s).unwrap();
        assert_eq!(parse(r#""abc""#).text_bytes(), 3);
        let parts = parse(
            r#"[{"type":"text","text":"ab"},{"type":"image","source":{}},
                {"type":"tool_result","tool_use_id":"t","content":"weather"},{"type":"text","text":"c"}]"#,
        );
        assert_eq!(parts.texts().collect::<Vec<_>>(), ["ab", "c"]);
        assert_eq!(parts.text_bytes(), 3);
    }

    #[test]
    fn weather_is_a_whole_word() {
        assert!(asks_about_weather(["What's the Weather in Paris?"]));
        assert!(asks_about_weather(["hi", "weather"]));
        assert!(!asks_about_weather(["weatherman", "whether"]));
        assert!(!asks_about_weather([]));
    }
}
