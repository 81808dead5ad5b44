//! Templates: text with `{{ path }}` placeholders that a run fills in. This is the one template
//! syntax of the product: workflow steps use it with the roots below, and a tool's URL and
//! header templates ([`crate::tool::template`]) use the same [`split`] and [`parse_path`] with
//! their own roots (`input`, `credentials`).
//!
//! A placeholder holds one path, whitespace around it ignored:
//!
//! - `input`, `input.<field>…`: the run's input;
//! - `steps.<id>.output`, `steps.<id>.output.<field>…`: the output of an upstream step;
//! - `item`, `item.<field>…`: the current element, only inside a loop's step.
//!
//! After the root, a path continues with `.<field>` (letters, digits, `_`, `-`) or `[<index>]`.
//! There is no escape for a literal `{{`; a `}}` outside a placeholder is plain text.
//!
//! Rendering ([`Template::render`]) reads a [`Scope`]: a template that is one placeholder and
//! nothing else (whitespace aside) gives the value it names, of whatever JSON type; any other
//! template gives text, strings inserted as they are and other values as compact JSON.
//!
//! What one rendering produces (a template, or every string of a [`TemplateObject`] together)
//! is capped at [`MAX_RENDERED_BYTES`], counted as compact JSON before anything is copied: a
//! template repeating a large value fails at once instead of filling memory.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Scope, StepId, TemplateObject};

/// Largest accepted template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// The most one rendering may produce, in bytes of compact JSON: 4 MiB, the largest answer an
/// outbound call reads.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

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
        let parts = split(source)?
            .into_iter()
            .map(|chunk| match chunk {
                Chunk::Text(text) => Ok(Part::Text(text.to_owned())),
                Chunk::Placeholder(path) => parse_reference(path).map(Part::Placeholder),
            })
            .collect::<Result<_, String>>()?;
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

/// A piece of template source, before its placeholders are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Text copied as is.
    Text(&'a str),
    /// The path inside `{{ … }}`, whitespace around it trimmed.
    Placeholder(&'a str),
}

/// Splits template source into text and placeholders: the one `{{ … }}` syntax.
pub fn split(source: &str) -> Result<Vec<Chunk<'_>>, String> {
    let mut chunks = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            chunks.push(Chunk::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "has a `{{` without a closing `}}`".to_owned())?;
        chunks.push(Chunk::Placeholder(after[..close].trim()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        chunks.push(Chunk::Text(rest));
    }
    Ok(chunks)
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

impl Template {
    /// Renders: a template that is exactly one placeholder (whitespace around it allowed)
    /// yields the referenced JSON value as is; any other template yields a string, with string
    /// values inserted as they are and other values as compact JSON.
    pub fn render(&self, scope: &Scope) -> Result<Value, String> {
        self.render_within(scope, &mut Allowance::full())
    }

    /// Renders as text (for prompts, headers, instructions), whatever the template holds.
    pub fn render_text(&self, scope: &Scope) -> Result<String, String> {
        self.render_text_within(scope, &mut Allowance::full())
    }

    fn render_within(&self, scope: &Scope, allowance: &mut Allowance) -> Result<Value, String> {
        match self.single_placeholder() {
            Some(reference) => {
                let value = reference.resolve(scope)?;
                allowance.take(json_len(value))?;
                Ok(value.clone())
            }
            None => self.render_text_within(scope, allowance).map(Value::String),
        }
    }

    fn render_text_within(
        &self,
        scope: &Scope,
        allowance: &mut Allowance,
    ) -> Result<String, String> {
        let mut text = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(plain) => {
                    allowance.take(plain.len())?;
                    text.push_str(plain);
                }
                Part::Placeholder(reference) => match reference.resolve(scope)? {
                    Value::String(value) => {
                        allowance.take(value.len())?;
                        text.push_str(value);
                    }
                    value => {
                        allowance.take(json_len(value))?;
                        text.push_str(&value.to_string());
                    }
                },
            }
        }
        Ok(text)
    }

    /// The placeholder, if the template is one placeholder with only whitespace around it.
    fn single_placeholder(&self) -> Option<&Reference> {
        let mut found = None;
        for part in &self.parts {
            match part {
                Part::Text(plain) if plain.trim().is_empty() => {}
                Part::Placeholder(reference) if found.is_none() => found = Some(reference),
                _ => return None,
            }
        }
        found
    }
}

impl Reference {
    /// The value this path names in `scope`; the error names the placeholder and what is
    /// missing, e.g. "`{{ steps.fetch.output.total }}`: steps.fetch.output has no field `total`".
    pub fn resolve<'a>(&self, scope: &Scope<'a>) -> Result<&'a Value, String> {
        self.walk(scope)
            .map_err(|why| format!("`{{{{ {self} }}}}`: {why}"))
    }

    fn walk<'a>(&self, scope: &Scope<'a>) -> Result<&'a Value, String> {
        let (mut value, mut at) = match &self.root {
            Root::Input => (scope.input, "input".to_owned()),
            Root::Item => (
                scope
                    .item
                    .ok_or("`item` exists only inside a loop's step")?,
                "item".to_owned(),
            ),
            Root::Step(id) => {
                let record = scope
                    .steps
                    .get(id.as_str())
                    .ok_or_else(|| format!("step `{id}` has not run"))?;
                let output = record.get("output").ok_or_else(|| {
                    match record.get("status").and_then(Value::as_str) {
                        Some(status) => format!("step `{id}` has no output (it is {status})"),
                        None => format!("step `{id}` has no output"),
                    }
                })?;
                (output, format!("steps.{id}.output"))
            }
        };
        for segment in &self.path {
            value = match (segment, value) {
                (Segment::Field(name), Value::Object(map)) => map
                    .get(name)
                    .ok_or_else(|| format!("{at} has no field `{name}`"))?,
                (Segment::Index(index), Value::Array(items)) => {
                    items.get(*index).ok_or_else(|| {
                        format!("{at} has no index {index} (it has {} items)", items.len())
                    })?
                }
                (Segment::Field(name), other) => {
                    return Err(format!(
                        "{at} is {}, which has no field `{name}`",
                        json_type(other)
                    ))
                }
                (Segment::Index(index), other) => {
                    return Err(format!(
                        "{at} is {}, which has no index {index}",
                        json_type(other)
                    ))
                }
            };
            write_segment(&mut at, segment);
        }
        Ok(value)
    }
}

impl fmt::Display for Reference {
    /// The path as written in a placeholder, e.g. `steps.fetch.output.items[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path = match &self.root {
            Root::Input => "input".to_owned(),
            Root::Item => "item".to_owned(),
            Root::Step(id) => format!("steps.{id}.output"),
        };
        self.path
            .iter()
            .for_each(|segment| write_segment(&mut path, segment));
        f.write_str(&path)
    }
}

fn write_segment(path: &mut String, segment: &Segment) {
    match segment {
        Segment::Field(name) => {
            path.push('.');
            path.push_str(name);
        }
        Segment::Index(index) => path.push_str(&format!("[{index}]")),
    }
}

/// "a string", "an object", … for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// What is left of [`MAX_RENDERED_BYTES`] in one rendering.
struct Allowance(usize);

impl Allowance {
    fn full() -> Self {
        Self(MAX_RENDERED_BYTES)
    }

    fn take(&mut self, bytes: usize) -> Result<(), String> {
        self.0 = self.0.checked_sub(bytes).ok_or_else(|| {
            format!(
                "renders to more than {MAX_RENDERED_BYTES} bytes, the most a template may produce"
            )
        })?;
        Ok(())
    }
}

/// The length of `value` as compact JSON, counted without writing it anywhere.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing JSON values into a sink that cannot fail does not fail.
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

impl TemplateObject {
    /// Renders every string in the object, recursively through arrays and objects, with
    /// [`Template::render`] (so `"{{ input.count }}"` stays a number); keys are kept. The
    /// strings share one [`MAX_RENDERED_BYTES`].
    pub fn render(&self, scope: &Scope) -> Result<Value, String> {
        render_map(self.as_map(), scope, &mut Allowance::full())
    }
}

fn render_map(
    map: &serde_json::Map<String, Value>,
    scope: &Scope,
    allowance: &mut Allowance,
) -> Result<Value, String> {
    map.iter()
        .map(|(key, value)| Ok((key.clone(), render_value(value, scope, allowance)?)))
        .collect::<Result<_, String>>()
        .map(Value::Object)
}

fn render_value(value: &Value, scope: &Scope, allowance: &mut Allowance) -> Result<Value, String> {
    match value {
        Value::String(source) => Template::parse(source)?.render_within(scope, allowance),
        Value::Array(items) => items
            .iter()
            .map(|item| render_value(item, scope, allowance))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) => render_map(map, scope, allowance),
        other => Ok(other.clone()),
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
    let segments = parse_path(path).ok_or_else(|| {
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

/// Parses a path such as `a.b[0].c` into segments: the one path syntax, `.<field>` (letters,
/// digits, `_`, `-`) or `[<index>]` after a first name; `None` if it is not such a path.
pub fn parse_path(path: &str) -> Option<Vec<Segment>> {
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
    use serde_json::{json, Map};

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

    struct Run {
        input: Value,
        steps: Map<String, Value>,
        run: Value,
    }

    fn run() -> Run {
        let Value::Object(steps) = json!({
            "fetch": {"status": "succeeded", "output": {"items": [{"name": "a", "n": 1}, {"name": "b"}], "total": 2, "ok": true}},
            "raw": {"status": "succeeded", "output": "plain text"},
            "skipped": {"status": "skipped"},
        }) else {
            unreachable!()
        };
        Run {
            input: json!({"message": "hi", "count": 3, "tags": ["x", "y"], "none": null}),
            steps,
            run: json!({"id": "r1"}),
        }
    }

    impl Run {
        fn scope(&self) -> Scope<'_> {
            Scope {
                input: &self.input,
                steps: &self.steps,
                run: &self.run,
                item: None,
                iteration: None,
            }
        }
    }

    fn render(source: &str, scope: &Scope) -> Result<Value, String> {
        Template::parse(source).unwrap().render(scope)
    }

    #[test]
    fn a_lone_placeholder_keeps_the_type_of_its_value() {
        let run = run();
        let scope = run.scope();
        assert_eq!(render("{{ input.count }}", &scope), Ok(json!(3)));
        assert_eq!(render("  {{input.tags}}\n", &scope), Ok(json!(["x", "y"])));
        assert_eq!(
            render("{{ steps.fetch.output.items[0] }}", &scope),
            Ok(json!({"name": "a", "n": 1}))
        );
        assert_eq!(render("{{ input.none }}", &scope), Ok(Value::Null));
        assert_eq!(
            render("{{ steps.raw.output }}", &scope),
            Ok(json!("plain text"))
        );
        assert_eq!(render("{{ input }}", &scope), Ok(run.input.clone()));
    }

    #[test]
    fn text_around_placeholders_interpolates_strings_raw_and_the_rest_as_json() {
        let run = run();
        let scope = run.scope();
        assert_eq!(
            render(
                "Say {{ input.message }} {{ input.count }} times to {{ steps.fetch.output.items[1] }}; ok={{ steps.fetch.output.ok }}",
                &scope
            ),
            Ok(json!(r#"Say hi 3 times to {"name":"b"}; ok=true"#))
        );
        assert_eq!(
            render("{{ input.message }}{{ input.message }}", &scope),
            Ok(json!("hihi"))
        );
        assert_eq!(
            render("no placeholders", &scope),
            Ok(json!("no placeholders"))
        );
        assert_eq!(render("", &scope), Ok(json!("")));
    }

    #[test]
    fn render_text_always_gives_text() {
        let run = run();
        let scope = run.scope();
        let text = |source: &str| Template::parse(source).unwrap().render_text(&scope);
        assert_eq!(text("{{ input.count }}"), Ok("3".to_owned()));
        assert_eq!(text(" {{ input.tags }} "), Ok(r#" ["x","y"] "#.to_owned()));
        assert_eq!(text("{{ input.message }}"), Ok("hi".to_owned()));
        assert_eq!(text("{{ input.none }}"), Ok("null".to_owned()));
    }

    #[test]
    fn an_object_renders_every_string_at_any_depth_and_keeps_keys() {
        let run = run();
        let item = json!({"id": 7});
        let scope = Scope {
            item: Some(&item),
            ..run.scope()
        };
        let object = TemplateObject::try_from(
            json!({
                "{{ input.message }}": "key untouched",
                "count": "{{ input.count }}",
                "nested": {"list": ["{{ item.id }}", "id {{ item.id }}", 5, null, {"deep": "{{ steps.fetch.output.total }}"}]},
                "flag": false,
            })
            .as_object()
            .unwrap()
            .clone(),
        )
        .unwrap();
        assert_eq!(
            object.render(&scope),
            Ok(json!({
                "{{ input.message }}": "key untouched",
                "count": 3,
                "nested": {"list": [7, "id 7", 5, null, {"deep": 2}]},
                "flag": false,
            }))
        );
        assert_eq!(TemplateObject::default().render(&scope), Ok(json!({})));
    }

    #[test]
    fn a_missing_path_is_an_error_naming_the_placeholder() {
        let run = run();
        let scope = run.scope();
        for (source, expected) in [
            (
                "{{ steps.fetch.output.missing }}",
                "`{{ steps.fetch.output.missing }}`: steps.fetch.output has no field `missing`",
            ),
            (
                "Total: {{ steps.fetch.output.items[5].name }}",
                "`{{ steps.fetch.output.items[5].name }}`: steps.fetch.output.items has no index 5 (it has 2 items)",
            ),
            (
                "{{ steps.fetch.output.items[1].n }}",
                "`{{ steps.fetch.output.items[1].n }}`: steps.fetch.output.items[1] has no field `n`",
            ),
            (
                "{{ input.message.text }}",
                "`{{ input.message.text }}`: input.message is a string, which has no field `text`",
            ),
            (
                "{{ input.count[0] }}",
                "`{{ input.count[0] }}`: input.count is a number, which has no index 0",
            ),
            (
                "{{ steps.later.output }}",
                "`{{ steps.later.output }}`: step `later` has not run",
            ),
            (
                "{{ steps.skipped.output.x }}",
                "`{{ steps.skipped.output.x }}`: step `skipped` has no output (it is skipped)",
            ),
            (
                "{{ item }}",
                "`{{ item }}`: `item` exists only inside a loop's step",
            ),
        ] {
            assert_eq!(render(source, &scope), Err(expected.to_owned()), "{source}");
        }
        let object = TemplateObject::try_from(
            json!({"a": ["{{ input.nope }}"]})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(
            object.render(&scope),
            Err("`{{ input.nope }}`: input has no field `nope`".to_owned())
        );
    }

    #[test]
    fn rendering_stops_once_the_output_passes_the_cap() {
        let big = "x".repeat(3_000_000);
        let run = Run {
            input: json!({"big": big}),
            steps: serde_json::Map::new(),
            run: json!({}),
        };
        let scope = run.scope();
        // One copy fits; a template repeating it fails without building the whole text.
        assert_eq!(
            render("{{ input.big }}", &scope)
                .unwrap()
                .as_str()
                .map(str::len),
            Some(3_000_000)
        );
        let repeated = "{{ input.big }} ".repeat(1000);
        let error = render(&repeated, &scope).unwrap_err();
        assert_eq!(
            error,
            format!(
                "renders to more than {MAX_RENDERED_BYTES} bytes, the most a template may produce"
            )
        );
        // The strings of an object share one cap.
        let Value::Object(map) = json!({"a": "{{ input.big }}", "b": ["{{ input.big }}"]}) else {
            unreachable!()
        };
        let object = TemplateObject::try_from(map).unwrap();
        assert!(object
            .render(&scope)
            .unwrap_err()
            .starts_with("renders to more than"));
    }

    #[test]
    fn a_reference_displays_as_its_path() {
        let template = Template::parse("{{ steps.fetch.output.items[0].name }}").unwrap();
        let reference = template.references().next().unwrap();
        assert_eq!(reference.to_string(), "steps.fetch.output.items[0].name");
    }
}
