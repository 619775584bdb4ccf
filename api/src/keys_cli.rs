//! `chatq-api keys list | revoke ID | rotate ID`: key lifecycle for operators. Existing keys
//! are shown by id, name and displayable prefix only; a secret is printed once, when made.

use std::io::Write;

use anyhow::Context as _;
use chatq_common::db::{self, keys::ApiKey};
use sqlx::PgPool;
use uuid::Uuid;

/// Writes a table of every key, newest first: id, role, state, prefix, creation, name.
pub async fn list(pool: &PgPool, out: &mut impl Write) -> anyhow::Result<()> {
    let keys = db::keys::list(pool).await.context("cannot list the keys")?;
    writeln!(out, "{:36}  {:6}  {:7}  {:14}  {:20}  name", "id", "role", "state", "prefix", "created")?;
    for key in &keys {
        writeln!(
            out,
            "{:36}  {:6}  {:7}  {:14}  {:20}  {}",
            key.id,
            key.role.as_str(),
            state(key),
            key.key_prefix,
            key.created_at.format("%Y-%m-%d %H:%M:%S"),
            printable(&key.name)
        )?;
    }
    Ok(())
}

/// Revokes key `id`. Callers holding it are refused within the API's key cache lifetime.
pub async fn revoke(pool: &PgPool, id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let key = db::keys::revoke(pool, id).await.context("cannot revoke the key")?;
    let key = key.with_context(|| format!("no key with id {id} (see `chatq-api keys list`)"))?;
    writeln!(out, "revoked key {} ({}, {})", key.id, key.key_prefix, printable(&key.name))?;
    Ok(())
}

/// Gives key `id` a new secret and writes it (only it) to `out`; the old secret is revoked.
pub async fn rotate(pool: &PgPool, id: &str, out: &mut impl Write) -> anyhow::Result<ApiKey> {
    let id = parse_id(id)?;
    let rotated = db::keys::rotate(pool, id).await.context("cannot rotate the key")?;
    let (secret, key) = rotated.with_context(|| format!("no live key with id {id} (see `chatq-api keys list`)"))?;
    writeln!(out, "{secret}")?;
    Ok(key)
}

fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    id.trim().parse().with_context(|| format!("{id:?} is not a key id (see `chatq-api keys list`)"))
}

fn state(key: &ApiKey) -> &'static str {
    if key.revoked_at.is_some() { "revoked" } else { "active" }
}

/// `name` without control characters, so a stored name cannot drive the operator's terminal.
fn printable(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}
