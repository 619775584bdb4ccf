//! `chatq-api ingest DIR --kb ID`: uploads a folder to a knowledge base in batches with a
//! progress bar, waits for every document to settle and prints a table of results.

use std::{
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

/// Runs the command; `Ok(false)` when a file failed or was refused.
pub async fn run(args: IngestArgs) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    collect(&args.dir, &mut files).with_context(|| format!("cannot read {}", args.dir.display()))?;
    files.sort();
    let mut rows = Vec::new();
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
    let bar = ProgressBar::new(supported.len() as u64);
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
    }
    bar.set_position(0);
    bar.set_message("ingesting");
    let started = Instant::now();
    let mut settled_docs: Vec<Value> = Vec::new();
    let mut pending = batches;
    let already = rows.iter().filter(|r| r.status == "duplicate" || r.status == "refused").count() as u64;
    let mut done_batches: Vec<Value> = Vec::new();
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
        bar.set_position(settled_count.min(bar.length().unwrap_or(0)));
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
    println!("{:w$}  {:9}  {:>6}  detail", "file", "status", "chunks");
    for r in &rows {
        println!("{:w$}  {:9}  {:>6}  {}", r.filename, r.status, r.chunks, r.detail);
    }
    let bad = rows.iter().filter(|r| r.status == "failed" || r.status == "refused").count();
    let ready = rows.iter().filter(|r| r.status == "ready").count();
    println!(
        "{ready} ready, {bad} failed, {} other, in {:.1}s",
        rows.len() - ready - bad,
        started.elapsed().as_secs_f64()
    );
    Ok(bad == 0)
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// A multipart body with one `files` part per file.
fn multipart(files: &[PathBuf]) -> anyhow::Result<(String, Vec<u8>)> {
    let boundary = format!("chatq-{}", chatq_common::new_id().simple());
    let mut body = Vec::new();
    for p in files {
        let name = p.file_name().map(|n| n.to_string_lossy().replace('"', "_")).unwrap_or_default();
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
