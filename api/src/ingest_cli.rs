//! `chatq-api ingest DIR --kb ID`: uploads a folder to a knowledge base in batches with a
//! progress bar, waits for every document to settle and prints a table of results.

use std::{
    io::{IsTerminal as _, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chatq_common::media;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Files per upload request at most.
const BATCH_FILES: usize = 16;
/// Bytes per upload request at most (the server's default limit is 200 MiB).
const BATCH_BYTES: u64 = 32 << 20;

/// What to ingest and where.
pub struct IngestArgs {
    /// Folder (searched recursively).
    pub dir: PathBuf,
    /// Knowledge base id.
    pub kb: String,
    /// API base URL, e.g. `http://127.0.0.1:8080`.
    pub api: String,
    /// Admin key.
    pub key: String,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

struct Row {
    filename: String,
    status: String,
    chunks: String,
    detail: String,
}

/// How progress is shown while files upload and ingest.
pub enum Progress {
    /// A live bar on stderr, for a person at a terminal.
    Bar,
    /// One line per step on this writer (`uploaded 16/40 files`, `ingested 20/40 files`), for
    /// CI logs and pipes, where a bar would draw nothing.
    Lines(Box<dyn Write + Send>),
}

impl Progress {
    /// A bar when stderr is a terminal, else lines on stderr.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() { Self::Bar } else { Self::Lines(Box::new(std::io::stderr())) }
    }

    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        if let Self::Lines(w) = self {
            // Progress is best effort: a closed stderr must not stop the upload.
            let _ = writeln!(w, "{text}");
        }
    }
}

/// The admin key: the first line of `key_file` when given, else `env` (`CHATQ_ADMIN_KEY`).
/// Never an argument, where every user of the machine could read it with `ps`.
pub fn admin_key(key_file: Option<&Path>, env: Option<String>) -> anyhow::Result<String> {
    let key = match key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => env.unwrap_or_default().trim().to_string(),
    };
    if key.is_empty() {
        bail!("no admin key: set CHATQ_ADMIN_KEY or pass --key-file FILE (a file holding the key)");
    }
    Ok(key)
}

/// Runs the command, printing the result table to `out`; `Ok(false)` when a file failed or was
/// refused (the binary then exits with status 1).
pub async fn run(args: IngestArgs, out: &mut (dyn Write + Send), mut progress: Progress) -> anyhow::Result<bool> {
    let Collected { mut files, refused } = collect_folder(&args.dir)?;
    files.sort();
    let mut rows: Vec<Row> = refused
        .into_iter()
        .map(|(p, why)| Row { filename: rel(&args.dir, &p), status: "skipped".into(), chunks: "-".into(), detail: why })
        .collect();
    let (supported, skipped): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|p| media::media_type_for(&p.to_string_lossy()).is_some());
    for p in skipped {
        rows.push(Row {
            filename: rel(&args.dir, &p),
            status: "skipped".into(),
            chunks: "-".into(),
            detail: "unsupported type".into(),
        });
    }
    if supported.is_empty() {
        bail!("no supported files in {} (supported: {})", args.dir.display(), media::supported_list());
    }
    let http = reqwest::Client::new();
    let base = args.api.trim_end_matches('/');
    let total = supported.len() as u64;
    let bar = match progress {
        Progress::Bar => ProgressBar::new(total),
        Progress::Lines(_) => ProgressBar::hidden(),
    };
    bar.set_length(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:10} [{bar:40}] {pos}/{len} files ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let mut batches = Vec::new();
    let mut group: Vec<PathBuf> = Vec::new();
    let mut size = 0u64;
    let mut groups = Vec::new();
    for p in supported {
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if !group.is_empty() && (group.len() == BATCH_FILES || size + len > BATCH_BYTES) {
            groups.push(std::mem::take(&mut group));
            size = 0;
        }
        size += len;
        group.push(p);
    }
    groups.push(group);
    for group in groups {
        let (content_type, body) = multipart(&group)?;
        let resp = http
            .post(format!("{base}/v1/knowledge-bases/{}/documents", args.kb))
            .bearer_auth(&args.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {base}"))?;
        let status = resp.status();
        let json: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 202 {
            let msg = json["error"]["message"].as_str().unwrap_or("request failed").to_string();
            if matches!(status.as_u16(), 401 | 403 | 404) {
                bar.abandon();
                bail!("upload refused ({status}): {msg}");
            }
            for p in &group {
                rows.push(Row {
                    filename: rel(&args.dir, p),
                    status: "refused".into(),
                    chunks: "-".into(),
                    detail: format!("{status}: {msg}"),
                });
            }
        } else {
            for d in json["documents"].as_array().into_iter().flatten() {
                if d["status"] == "duplicate" {
                    rows.push(Row {
                        filename: d["filename"].as_str().unwrap_or("").into(),
                        status: "duplicate".into(),
                        chunks: "-".into(),
                        detail: format!("same content as document {}", d["id"].as_str().unwrap_or("")),
                    });
                }
            }
            batches.push(json["batch_id"].as_str().unwrap_or("").to_string());
        }
        bar.inc(group.len() as u64);
        progress.line(format_args!("uploaded {}/{total} files", bar.position()));
    }
    bar.set_position(0);
    bar.set_message("ingesting");
    let started = Instant::now();
    let mut settled_docs: Vec<Value> = Vec::new();
    let mut pending = batches;
    let already = rows.iter().filter(|r| r.status == "duplicate" || r.status == "refused").count() as u64;
    let mut done_batches: Vec<Value> = Vec::new();
    let mut reported = None;
    loop {
        let mut still = Vec::new();
        let mut settled_count =
            already + done_batches.iter().map(|b| b["documents"].as_array().map_or(0, Vec::len) as u64).sum::<u64>();
        for id in pending {
            let b: Value = http
                .get(format!("{base}/v1/ingestion-batches/{id}"))
                .bearer_auth(&args.key)
                .send()
                .await
                .context("cannot reach the API")?
                .json()
                .await
                .unwrap_or(Value::Null);
            let c = &b["counts"];
            settled_count += c["ready"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0);
            if c["queued"] == 0 && c["processing"] == 0 && !b["documents"].is_null() {
                done_batches.push(b);
            } else {
                still.push(id);
            }
        }
        let settled_count = settled_count.min(total);
        bar.set_position(settled_count);
        if reported != Some(settled_count) {
            reported = Some(settled_count);
            progress.line(format_args!("ingested {settled_count}/{total} files"));
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if started.elapsed() > args.timeout {
            bar.abandon_with_message("timed out");
            bail!("documents still queued or processing after {}s", args.timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_with_message("done");
    for b in done_batches {
        settled_docs.extend(b["documents"].as_array().cloned().unwrap_or_default());
    }
    for d in settled_docs {
        rows.push(Row {
            filename: d["filename"].as_str().unwrap_or("").into(),
            status: d["status"].as_str().unwrap_or("").into(),
            chunks: d["chunk_count"].to_string(),
            detail: if d["error"].is_null() {
                String::new()
            } else {
                format!(
                    "{}: {}",
                    d["error"]["code"].as_str().unwrap_or(""),
                    d["error"]["message"].as_str().unwrap_or("")
                )
            },
        });
    }
    rows.sort_by(|a, b| a.filename.cmp(&b.filename));
    let w = rows.iter().map(|r| r.filename.chars().count()).max().unwrap_or(4).max(4);
    writeln!(out, "{:w$}  {:9}  {:>6}  detail", "file", "status", "chunks")?;
    for r in &rows {
        writeln!(out, "{:w$}  {:9}  {:>6}  {}", printable(&r.filename), r.status, r.chunks, printable(&r.detail))?;
    }
    let bad = rows.iter().filter(|r| r.status == "failed" || r.status == "refused").count();
    let ready = rows.iter().filter(|r| r.status == "ready").count();
    writeln!(
        out,
        "{ready} ready, {bad} failed, {} other, in {:.1}s",
        rows.len() - ready - bad,
        started.elapsed().as_secs_f64()
    )?;
    Ok(bad == 0)
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned()
}

/// The files of a folder to upload, and the entries left out with the reason.
#[derive(Debug, Default)]
pub struct Collected {
    /// Regular files inside the folder (symbolic links included when they resolve to one).
    pub files: Vec<PathBuf>,
    /// Entries not uploaded: symbolic links leading out of the folder or to a folder.
    pub refused: Vec<(PathBuf, String)>,
}

/// The files under `dir`, recursively. A symbolic link is followed only to a regular file
/// inside `dir` (an untrusted folder must not upload `~/.aws/credentials` through a link), and
/// never to a folder, so link cycles cannot make the walk endless.
pub fn collect_folder(dir: &Path) -> anyhow::Result<Collected> {
    let root = dir.canonicalize().with_context(|| format!("cannot read {}", dir.display()))?;
    let mut out = Collected::default();
    collect(&root, dir, &mut out).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(out)
}

fn collect(root: &Path, dir: &Path, out: &mut Collected) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // The entry's own type: a symbolic link is not followed here.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            out.files.push(path);
        } else if kind.is_symlink() {
            match path.canonicalize() {
                Ok(target) if !target.starts_with(root) => {
                    out.refused.push((path, "symbolic link to outside the folder".into()));
                }
                Ok(target) if target.is_file() => out.files.push(path),
                Ok(_) => out.refused.push((path, "symbolic link to a folder".into())),
                Err(_) => out.refused.push((path, "broken symbolic link".into())),
            }
        }
    }
    Ok(())
}

/// `name` as a quoted-string parameter of a multipart header: `"`, `\\`, CR, LF and other
/// control characters percent-encoded as browsers do, so a file name cannot end the header or add
/// headers or parts.
pub fn header_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` from the server without control characters, so it cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A multipart body with one `files` part per file.
pub fn multipart(files: &[PathBuf]) -> anyhow::Result<(String, Vec<u8>)> {
    let boundary = format!("chatq-{}", chatq_common::new_id().simple());
    let mut body = Vec::new();
    for p in files {
        let name = p.file_name().map(|n| header_filename(&n.to_string_lossy())).unwrap_or_default();
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok((format!("multipart/form-data; boundary={boundary}"), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chatq-ingest-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn symbolic_links_out_of_the_folder_or_to_folders_are_not_followed() {
        let base = scratch("links");
        let (dir, outside) = (base.join("kb"), base.join("home"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("credentials"), "aws_secret_access_key=...").unwrap();
        std::fs::write(dir.join("sub/guide.md"), "# Guide").unwrap();
        let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
        link(&outside.join("credentials"), "notes.txt");
        link(&outside, "home");
        link(&dir, "loop");
        link(&dir.join("sub/guide.md"), "guide-link.md");
        link(&dir.join("missing.txt"), "dangling.txt");

        let found = collect_folder(&dir).unwrap();
        let mut files: Vec<String> = found.files.iter().map(|p| rel(&dir, p)).collect();
        files.sort();
        assert_eq!(files, ["guide-link.md", "sub/guide.md"]);
        let mut refused: Vec<(String, &str)> =
            found.refused.iter().map(|(p, why)| (rel(&dir, p), why.as_str())).collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                ("dangling.txt".to_string(), "broken symbolic link"),
                ("home".to_string(), "symbolic link to outside the folder"),
                ("loop".to_string(), "symbolic link to a folder"),
                ("notes.txt".to_string(), "symbolic link to outside the folder"),
            ]
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_file_name_cannot_add_headers_or_parts_to_the_upload() {
        let dir = scratch("names");
        let evil = "a\"; name=\"x\r\nContent-Type: evil\r\n\r\n--b\nx.txt";
        std::fs::write(dir.join(evil), "hello").unwrap();
        let (content_type, body) = multipart(&[dir.join(evil)]).unwrap();
        let boundary = content_type.split("boundary=").nth(1).unwrap();
        let body = String::from_utf8(body).unwrap();
        let (headers, _) = body.split_once("\r\n\r\n").unwrap();
        let lines: Vec<&str> = headers.split("\r\n").collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], format!("--{boundary}"));
        assert_eq!(
            lines[1],
            "Content-Disposition: form-data; name=\"files\"; filename=\"a%22; name=%22x%0D%0AContent-Type: evil%0D%0A%0D%0A--b%0Ax.txt\""
        );
        assert_eq!(lines[2], "Content-Type: application/octet-stream");
        assert_eq!(body.matches("Content-Disposition").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_admin_key_comes_from_a_key_file_or_the_environment() {
        let dir = scratch("key");
        let file = dir.join("admin.key");
        std::fs::write(&file, "cq_admin_fromfile\n").unwrap();
        assert_eq!(admin_key(Some(&file), Some("cq_admin_fromenv".into())).unwrap(), "cq_admin_fromfile");
        assert_eq!(admin_key(None, Some(" cq_admin_fromenv\n".into())).unwrap(), "cq_admin_fromenv");
        let none = admin_key(None, None).unwrap_err().to_string();
        assert!(none.contains("CHATQ_ADMIN_KEY") && none.contains("--key-file"), "{none}");
        let missing = admin_key(Some(&dir.join("nope")), None).unwrap_err().to_string();
        assert!(missing.contains("key file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
