//! The document types knowledge bases ingest.

use std::path::Path;

/// The media types chatq ingests, with the file extensions that select them.
pub const SUPPORTED: [(&str, &[&str]); 4] = [
    ("application/pdf", &["pdf"]),
    ("text/markdown", &["md", "markdown"]),
    ("text/html", &["html", "htm"]),
    ("text/plain", &["txt", "text"]),
];

/// The media type for a file name's extension, if supported.
pub fn media_type_for(filename: &str) -> Option<&'static str> {
    let ext = Path::new(filename).extension()?.to_str()?.to_ascii_lowercase();
    SUPPORTED.iter().find(|(_, exts)| exts.contains(&ext.as_str())).map(|(t, _)| *t)
}

/// A human list of the supported types, e.g. for a 415 answer.
pub fn supported_list() -> String {
    SUPPORTED.iter().map(|(t, exts)| format!("{t} (.{})", exts.join(", ."))).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_follow_the_extension() {
        assert_eq!(media_type_for("a.PDF"), Some("application/pdf"));
        assert_eq!(media_type_for("notes.md"), Some("text/markdown"));
        assert_eq!(media_type_for("x.docx"), None);
        assert!(supported_list().contains("text/html (.html, .htm)"));
    }
}
