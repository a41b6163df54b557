//! Reading the policy's files: their text (with the stamp that lets a reload skip an unchanged
//! key file), and YAML parsed with the path of the field a problem is about.

use crate::config::stamp;
use crate::config::Problem;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

pub(super) fn read_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, Problem> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        if let Some(at) = inner.location().filter(|_| !message.contains("line ")) {
            message.push_str(&format!(" at line {} column {}", at.line(), at.column()));
        } else if inner.location().is_none() {
            // The parser gives no position for a second document; say where it begins.
            if let Some(line) = second_document_line(text) {
                message = format!(
                    "the file holds more than one YAML document: the second begins at line {line} \
                     (a top level must start at column 1, with no `---` after it)"
                );
            }
        }
        Problem {
            file: file.to_path_buf(),
            field: if field == "." { String::new() } else { field },
            message,
        }
    })
}

/// The line where a second YAML document would begin: a `---` or `...` after the first content,
/// or a line indented less than the first content line (an indented first line ends its
/// document at the first line that is not).
fn second_document_line(text: &str) -> Option<usize> {
    let mut first_indent = None;
    for (i, line) in text.lines().enumerate() {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        let marker = content.starts_with("---") || content.starts_with("...");
        match first_indent {
            None if marker => continue,
            None => first_indent = Some(indent),
            Some(first) if marker || indent < first => return Some(i + 1),
            Some(_) => {}
        }
    }
    None
}

/// Where a file is opened from: by its whole path, or by its name in a directory already open.
/// Opening 100,000 key files by name relative to the keys directory spares the kernel a walk of
/// every directory above it per file.
#[derive(Clone, Copy)]
pub(super) enum OpenFrom<'a> {
    Path,
    Dir(&'a std::fs::File),
}

/// A key file's text, and its stamp taken before reading: a write during the read then shows as a
/// changed stamp on the next load.
pub(super) fn read_text_stamped(
    file: &Path,
    from: OpenFrom<'_>,
) -> Result<(String, stamp::Stamp, Option<SystemTime>), Problem> {
    let problem = |e: std::io::Error| Problem {
        file: file.to_path_buf(),
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    let opened = match (from, file.file_name()) {
        (OpenFrom::Dir(dir), Some(name)) => {
            use rustix::fs::{Mode, OFlags};
            rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map(std::fs::File::from)
                .map_err(std::io::Error::from)
        }
        _ => std::fs::File::open(file),
    }
    .map_err(problem)?;
    let meta = opened.metadata();
    let stamp = meta
        .as_ref()
        .map_or(stamp::NONE, |m| stamp::of(m, SystemTime::now()));
    let modified = meta.as_ref().ok().and_then(|m| m.modified().ok());
    // Sized from the metadata just taken. `File::read_to_string` would stat and seek again
    // first, and read once more to see the end: three more system calls per file in a load of
    // 100,000. One read that asks for a byte more than the file holds and gets exactly its size
    // has the whole file; anything else (a file that grew or shrank since) reads on to the end.
    let size = meta.map_or(0, |m| usize::try_from(m.len()).unwrap_or(0));
    let mut bytes = vec![0; size.saturating_add(1)];
    let first = (&opened).read(&mut bytes).map_err(problem)?;
    bytes.truncate(first);
    if first != size {
        (&opened)
            .take(u64::MAX)
            .read_to_end(&mut bytes)
            .map_err(problem)?;
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        problem(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok((text, stamp, modified))
}

pub(super) fn read_text(file: &Path) -> Result<String, Problem> {
    read_text_stamped(file, OpenFrom::Path).map(|(text, ..)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_of_any_size_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0, 1, 511, 4096, 70_000] {
            let text: String = "key: value\n".chars().cycle().take(size).collect();
            let path = dir.path().join(format!("{size}.yaml"));
            std::fs::write(&path, &text).unwrap();
            assert_eq!(read_text(&path).unwrap(), text, "{size} bytes");
        }
        std::fs::write(dir.path().join("bad.yaml"), [b'a', 0xff, b'b']).unwrap();
        let problem = read_text(&dir.path().join("bad.yaml")).unwrap_err();
        assert!(problem.message.contains("UTF-8"), "{problem:?}");
    }

    #[test]
    fn where_a_second_document_begins() {
        assert_eq!(second_document_line(" listen: x\nproviders: {}\n"), Some(2));
        assert_eq!(second_document_line("---\nlisten: x\n---\nb: 1\n"), Some(3));
        assert_eq!(second_document_line("# c\nlisten: x\n  nested: 1\n"), None);
    }
}
