//! Guards around the CEL parser, which recurses once per nested bracket and needs far more
//! stack per level than a request's thread has (about 100 KiB a level in a debug build, so
//! twenty nested parentheses overflowed a 2 MiB tokio worker and aborted the process). An
//! expression may nest brackets at most [`MAX_NESTING`] deep, and it is parsed on a thread
//! of its own with [`PARSER_STACK_BYTES`] of stack, which that depth fits in many times over.

use std::thread;

/// Deepest nesting of `(`, `[` and `{` an expression may have.
pub const MAX_NESTING: usize = 32;

/// Stack of the thread the parser runs on; only the pages it touches are ever committed.
const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Refuses source whose brackets nest deeper than [`MAX_NESTING`]; brackets inside string
/// literals do not count.
pub fn check_nesting(source: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("nests brackets more than {MAX_NESTING} deep"));
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    Ok(())
}

/// Runs `parse` on a thread with the parser's stack and gives its result; a panic in the
/// parser (a third-party crate reading user input) becomes an error.
pub fn on_parser_stack<T: Send>(
    parse: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    thread::scope(|scope| {
        thread::Builder::new()
            .name("cel-parser".to_owned())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, parse)
            .map_err(|e| format!("could not be parsed now ({e})"))?
            .join()
            .map_err(|_| "is not a valid CEL expression (the parser failed)".to_owned())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_nest_up_to_the_bound_and_strings_do_not_count() {
        let at_bound = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(check_nesting(&at_bound), Ok(()));
        let deeper = format!("[{at_bound}]");
        assert_eq!(
            check_nesting(&deeper),
            Err(format!("nests brackets more than {MAX_NESTING} deep"))
        );
        let quoted = format!(
            "input.s == '{}' && input.t == \"\\\"{}\"",
            "(".repeat(99),
            "[".repeat(99)
        );
        assert_eq!(check_nesting(&quoted), Ok(()));
    }
}
