//! Reading policy sources: YAML or JSON text into a JSON value, plus a locator that maps every
//! field path back to its line and column so errors can point at the source.

// Diagnostics are returned by value on the (cold) error path; boxing them buys nothing.
#![allow(clippy::result_large_err)]

use super::diagnostic::Diagnostic;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use yaml_rust2::parser::{Event, Parser};

/// A parsed source file: its text, its value, and where each field is.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    pub value: serde_json::Value,
    /// Built on first use: only diagnostics need it, and building it parses the text again.
    locator: std::sync::OnceLock<Locator>,
}

impl SourceFile {
    /// Where each field is in the text (for diagnostics).
    pub fn locator(&self) -> &Locator {
        self.locator.get_or_init(|| Locator::from_text(&self.text))
    }
}

/// JSON pointer → (line, column), both 1-based. For a mapping entry the key's position, for a
/// sequence item the item's.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

impl Locator {
    /// Builds the locator from YAML (or JSON, which YAML's flow style covers) text. A text the
    /// event parser cannot read yields an empty locator: errors then carry no line.
    pub fn from_text(text: &str) -> Locator {
        let mut positions = HashMap::new();
        let mut parser = Parser::new_from_str(text);
        // Stack of containers: (pointer, Some(pending key) for maps / None for sequences, next index)
        enum Frame {
            Map { ptr: String, key: Option<String> },
            Seq { ptr: String, index: usize },
        }
        let mut stack: Vec<Frame> = Vec::new();
        while let Ok((event, mark)) = parser.next_token() {
            let pos = (mark.line(), mark.col() + 1);
            // Where does a value that starts here live?
            let child_ptr = |stack: &mut Vec<Frame>,
                             positions: &mut HashMap<String, (usize, usize)>|
             -> Option<String> {
                match stack.last_mut() {
                    Some(Frame::Map { ptr, key }) => key
                        .take()
                        .map(|k| format!("{ptr}/{}", k.replace('~', "~0").replace('/', "~1"))),
                    Some(Frame::Seq { ptr, index }) => {
                        let p = format!("{ptr}/{index}");
                        *index += 1;
                        positions.entry(p.clone()).or_insert(pos);
                        Some(p)
                    }
                    None => Some(String::new()),
                }
            };
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    let is_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                    if is_key {
                        if let Some(Frame::Map { ptr, key }) = stack.last_mut() {
                            let p =
                                format!("{ptr}/{}", value.replace('~', "~0").replace('/', "~1"));
                            positions.entry(p).or_insert(pos);
                            *key = Some(value);
                        }
                    } else {
                        let _ = child_ptr(&mut stack, &mut positions);
                    }
                }
                Event::MappingStart(..) => {
                    if let Some(p) = child_ptr(&mut stack, &mut positions) {
                        positions.entry(p.clone()).or_insert(pos);
                        stack.push(Frame::Map { ptr: p, key: None });
                    }
                }
                Event::SequenceStart(..) => {
                    if let Some(p) = child_ptr(&mut stack, &mut positions) {
                        positions.entry(p.clone()).or_insert(pos);
                        stack.push(Frame::Seq { ptr: p, index: 0 });
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(_) => {
                    let _ = child_ptr(&mut stack, &mut positions);
                }
                _ => {}
            }
        }
        Locator { positions }
    }

    /// Position of `pointer`, or of its nearest located ancestor.
    pub fn locate(&self, pointer: &str) -> Option<(usize, usize)> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            match p.rfind('/') {
                Some(i) => p = p.get(..i).unwrap_or(""),
                None => return None,
            }
        }
    }

    /// A diagnostic at `pointer` in `file`.
    pub fn diagnostic(
        &self,
        file: &Path,
        pointer: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let pos = self.locate(pointer);
        Diagnostic {
            file: file.to_path_buf(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            field: super::diagnostic::pointer_to_field(pointer),
            message: message.into(),
            hint,
        }
    }
}

/// Source format, from the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Some(Format::Yaml),
            Some("json") => Some(Format::Json),
            _ => None,
        }
    }
}

/// Parses `text` (from `path`) into a [`SourceFile`]. A syntax error is a diagnostic with the
/// parser's line and column.
pub fn parse(path: &Path, text: String) -> Result<SourceFile, Diagnostic> {
    let format = Format::of(path).unwrap_or(Format::Yaml);
    let syntax = |line: Option<usize>, column: Option<usize>, message: String| Diagnostic {
        file: path.to_path_buf(),
        line,
        column,
        field: String::new(),
        message,
        hint: None,
    };
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_str(&text).map_err(|e| {
            syntax(
                Some(e.line()),
                Some(e.column()),
                format!("invalid JSON: {e}"),
            )
        })?,
        Format::Yaml => yaml_serde::from_str(&text).map_err(|e| {
            let loc = e.location();
            syntax(
                loc.as_ref().map(|l| l.line()),
                loc.as_ref().map(|l| l.column()),
                format!("invalid YAML: {e}"),
            )
        })?,
    };
    Ok(SourceFile {
        path: path.to_path_buf(),
        text,
        value,
        locator: std::sync::OnceLock::new(),
    })
}

/// Reads and parses one file.
pub fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostic {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read file: {e}"),
        hint: None,
    })?;
    parse(path, text)
}

/// Every `.yaml`, `.yml` and `.json` file under `paths` (files are taken as given, directories
/// walked recursively), sorted, without duplicates. Hidden entries are skipped.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut out = Vec::new();
    for p in paths {
        walk(p, true, &mut out)?;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), Diagnostic> {
    let io = |e: std::io::Error| Diagnostic {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
        hint: None,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, false, out)?;
        }
    } else if explicit || Format::of(path).is_some() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_yaml_fields_and_items() {
        let text = "apiVersion: v1\nspec:\n  rules:\n    - id: a\n      conditions:\n        - param: amount\n          lte: 5\n";
        let l = Locator::from_text(text);
        assert_eq!(l.locate("/apiVersion"), Some((1, 1)));
        assert_eq!(l.locate("/spec/rules/0/id").map(|p| p.0), Some(4));
        assert_eq!(
            l.locate("/spec/rules/0/conditions/0/lte").map(|p| p.0),
            Some(7)
        );
        // unknown child falls back to the nearest ancestor
        assert_eq!(
            l.locate("/spec/rules/0/conditions/0/nope").map(|p| p.0),
            Some(6)
        );
    }

    #[test]
    fn locates_json_fields() {
        let text = "{\n  \"a\": {\n    \"b\": [1,\n      2]\n  }\n}\n";
        let l = Locator::from_text(text);
        assert_eq!(l.locate("/a/b").map(|p| p.0), Some(3));
        assert_eq!(l.locate("/a/b/1").map(|p| p.0), Some(4));
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = parse(Path::new("x.yaml"), "a: [1, 2\nb: c\n".into()).err();
        assert!(e.as_ref().and_then(|d| d.line).is_some(), "{e:?}");
    }
}
