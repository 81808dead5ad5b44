//! Templates: text with `{{ path }}` placeholders that a run fills in.
//!
//! A placeholder holds one path, whitespace around it ignored:
//!
//! - `input`, `input.<field>…`: the run's input;
//! - `steps.<id>.output`, `steps.<id>.output.<field>…`: the output of an upstream step;
//! - `item`, `item.<field>…`: the current element, only inside a loop's step.
//!
//! After the root, a path continues with `.<field>` (letters, digits, `_`, `-`) or `[<index>]`.
//! There is no escape for a literal `{{`; a `}}` outside a placeholder is plain text.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::StepId;

/// Largest accepted template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// What a placeholder starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// The run's input.
    Input,
    /// The output of the step with this id.
    Step(StepId),
    /// The current element of a loop.
    Item,
}

/// One step of a path after its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `.name`
    Field(String),
    /// `[n]`
    Index(usize),
}

/// A parsed placeholder path, e.g. `steps.lookup.output.items[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Where the path starts.
    pub root: Root,
    /// The fields and indexes after the root (after `output` for a step).
    pub path: Vec<Segment>,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Text(String),
    /// A placeholder.
    Placeholder(Reference),
}

/// A template whose placeholders all parse.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("must be at most {MAX_TEMPLATE_BYTES} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| "has a `{{` without a closing `}}`".to_owned())?;
            parts.push(Part::Placeholder(parse_reference(after[..close].trim())?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Its pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Every placeholder path.
    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|part| match part {
            Part::Placeholder(reference) => Some(reference),
            Part::Text(_) => None,
        })
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl TryFrom<String> for Template {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        Self::parse(&source)
    }
}

impl From<Template> for String {
    fn from(template: Template) -> Self {
        template.source
    }
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

fn placeholder_error(path: &str, why: &str) -> String {
    format!("has a placeholder `{{{{ {path} }}}}` that {why}")
}

/// Parses the inside of `{{ … }}`.
fn parse_reference(path: &str) -> Result<Reference, String> {
    if path.is_empty() {
        return Err("has an empty placeholder `{{ }}`".to_owned());
    }
    let segments = split_path(path).ok_or_else(|| {
        placeholder_error(
            path,
            "is not a path like `input.field`, `steps.<id>.output.field` or `item`",
        )
    })?;
    let mut segments = segments.into_iter();
    let root = match segments.next() {
        Some(Segment::Field(root)) => root,
        _ => return Err(placeholder_error(path, "must start with a name")),
    };
    match root.as_str() {
        "input" => Ok(Reference {
            root: Root::Input,
            path: segments.collect(),
        }),
        "item" => Ok(Reference {
            root: Root::Item,
            path: segments.collect(),
        }),
        "steps" => {
            let id = match segments.next() {
                Some(Segment::Field(id)) => StepId::parse(&id)
                    .map_err(|_| placeholder_error(path, "names no valid step id"))?,
                _ => return Err(placeholder_error(path, "must name a step: `steps.<id>`")),
            };
            match segments.next() {
                Some(Segment::Field(output)) if output == "output" => Ok(Reference {
                    root: Root::Step(id),
                    path: segments.collect(),
                }),
                _ => Err(placeholder_error(
                    path,
                    "must read a step's output: `steps.<id>.output…`",
                )),
            }
        }
        other => Err(placeholder_error(
            path,
            &format!("starts with `{other}`; use `input`, `steps.<id>.output` or `item`"),
        )),
    }
}

/// Splits `a.b[0].c` into segments; `None` if it is not such a path.
fn split_path(path: &str) -> Option<Vec<Segment>> {
    let bytes = path.as_bytes();
    let mut segments = Vec::new();
    let mut i = 0;
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    loop {
        let start = i;
        while i < bytes.len() && is_name(bytes[i]) {
            i += 1;
        }
        if i == start {
            return None;
        }
        segments.push(Segment::Field(path[start..i].to_owned()));
        while i < bytes.len() && bytes[i] == b'[' {
            let close = path[i..].find(']')? + i;
            let index = path[i + 1..close].trim().parse::<usize>().ok()?;
            segments.push(Segment::Index(index));
            i = close + 1;
        }
        match bytes.get(i) {
            None => return Some(segments),
            Some(b'.') => i += 1,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(source: &str) -> Vec<Reference> {
        Template::parse(source)
            .unwrap()
            .references()
            .cloned()
            .collect()
    }

    #[test]
    fn plain_text_has_no_placeholders() {
        assert!(refs("Hello, world } }} {").is_empty());
        assert_eq!(
            Template::parse("x").unwrap().parts(),
            &[Part::Text("x".into())]
        );
    }

    #[test]
    fn placeholders_name_input_steps_and_items() {
        assert_eq!(
            refs("Reply to: {{ input.message }} and {{steps.draft.output.items[2].text}}"),
            vec![
                Reference {
                    root: Root::Input,
                    path: vec![Segment::Field("message".into())],
                },
                Reference {
                    root: Root::Step(StepId::parse("draft").unwrap()),
                    path: vec![
                        Segment::Field("items".into()),
                        Segment::Index(2),
                        Segment::Field("text".into()),
                    ],
                },
            ]
        );
        assert_eq!(
            refs("{{ item }}"),
            vec![Reference {
                root: Root::Item,
                path: vec![],
            }]
        );
    }

    #[test]
    fn malformed_placeholders_are_refused() {
        for bad in [
            "{{ input.message",
            "{{ }}",
            "{{ env.x }}",
            "{{ steps }}",
            "{{ steps.Draft.output }}",
            "{{ steps.draft }}",
            "{{ steps.draft.status }}",
            "{{ input..x }}",
            "{{ input.x[a] }}",
            "{{ input + 1 }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_huge_template_is_refused() {
        assert!(Template::parse(&"x".repeat(MAX_TEMPLATE_BYTES + 1)).is_err());
    }
}
