//! The chat widget, `<chatq-chat>`, served from the binary: the JavaScript modules in
//! `api/widget/` joined into one module at `/widget/chatq.js` (revalidated every 5 minutes) and
//! at `/widget/{version}/chatq.js` (immutable), with its Subresource Integrity hash at
//! `/widget/manifest.json`. With `CHATQ_DEMO=1` also a demo page at `/demo` and its token
//! endpoint, which signs anyone in as a random visitor (a development aid).
//!
//! The modules are joined without a build tool: each is a plain module whose imports are
//! single lines of the sibling files, so the joined module is the modules in dependency order
//! with their `import` lines dropped and the `export` keyword of all but the last removed.

use std::sync::LazyLock;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use chatq_common::config::ExposeSecret;
use chatq_common::{db, keys::Role};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha384};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::{error::ApiError, state::AppState, user_token};

/// The widget's modules, each after the ones it imports; the last one is the entry.
pub const MODULES: [(&str, &str); 5] = [
    ("styles.js", include_str!("../../widget/styles.js")),
    ("markdown.js", include_str!("../../widget/markdown.js")),
    ("api.js", include_str!("../../widget/api.js")),
    ("stream.js", include_str!("../../widget/stream.js")),
    ("chatq.js", include_str!("../../widget/chatq.js")),
];

/// The widget as served, with its cache validators.
pub struct Widget {
    /// The joined module.
    pub source: String,
    /// A short content hash: the versioned path segment and the `ETag`.
    pub version: String,
    /// `sha384-…`, for `<script integrity>`.
    pub integrity: String,
}

/// The widget of this binary.
pub static WIDGET: LazyLock<Widget> = LazyLock::new(|| {
    let source = join_modules(&MODULES);
    let version = hex::encode(&Sha256::digest(source.as_bytes())[..8]);
    let integrity = format!("sha384-{}", STANDARD.encode(Sha384::digest(source.as_bytes())));
    Widget { source, version, integrity }
});

/// Joins ES modules into one (see the module docs for the rules the sources follow).
pub fn join_modules(modules: &[(&str, &str)]) -> String {
    let mut out = String::from("// chatq chat widget <chatq-chat>; sources: api/widget/ in the chatq repository.\n");
    for (i, (name, source)) in modules.iter().enumerate() {
        let entry = i + 1 == modules.len();
        out.push_str("// --- ");
        out.push_str(name);
        out.push('\n');
        for line in source.lines() {
            if line.starts_with("import ") || line == "// @ts-check" {
                continue;
            }
            match line.strip_prefix("export ") {
                Some(rest) if !entry => out.push_str(rest),
                _ => out.push_str(line),
            }
            out.push('\n');
        }
    }
    out
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/widget/chatq.js", get(latest))
        .route("/widget/{version}/chatq.js", get(versioned))
        .route("/widget/manifest.json", get(manifest))
        .route("/demo", get(demo_page))
        .route("/demo/token", post(demo_token))
}

/// Headers every widget response carries: any site may load it (module scripts are fetched
/// with CORS).
fn shared_headers(headers: &mut HeaderMap, cache: &'static str) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

fn script(request: &HeaderMap, cache: &'static str) -> Response {
    let widget = &*WIDGET;
    let etag = format!("\"{}\"", widget.version);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { widget.source.clone().into_response() };
    let headers = response.headers_mut();
    shared_headers(headers, cache);
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex is a valid header value"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    response
}

/// The current widget; browsers check for a new one every 5 minutes (ETag).
async fn latest(headers: HeaderMap) -> Response {
    script(&headers, "public, max-age=300")
}

/// One exact version of the widget, cached for good.
async fn versioned(Path(version): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    if version != WIDGET.version {
        return Err(ApiError::NotFound("widget version"));
    }
    Ok(script(&headers, "public, max-age=31536000, immutable"))
}

/// `{version, src, integrity}`: the versioned path and its Subresource Integrity hash.
async fn manifest() -> Response {
    let widget = &*WIDGET;
    let body = json!({
        "version": widget.version,
        "src": format!("/widget/{}/chatq.js", widget.version),
        "integrity": widget.integrity,
    });
    let mut response = axum::Json(body).into_response();
    shared_headers(response.headers_mut(), "public, max-age=300");
    response
}

#[derive(Debug, Deserialize)]
struct DemoQuery {
    assistant: Option<Uuid>,
}

const DEMO_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chatq widget demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; padding: 16px; background: #f5f5f4; color: #1c1917; }
  main { max-width: 720px; margin: 0 auto; }
  h1 { font-size: 1.4rem; }
  code { background: #e7e5e4; padding: 1px 4px; border-radius: 4px; }
</style>
<script type="module" src="__SRC__" integrity="__INTEGRITY__" crossorigin="anonymous"></script>
</head>
<body>
<main>
<h1>chatq widget demo</h1>
<p>A development aid (<code>CHATQ_DEMO=1</code>): every visitor is signed in as a random demo
user. Ask about chatq, for example <em>What are the upload limits?</em></p>
__WIDGET__
</main>
</body>
</html>
"#;

/// The demo page: the widget, inline, for `?assistant=` or the newest assistant named "Demo".
async fn demo_page(State(state): State<AppState>, Query(q): Query<DemoQuery>) -> Result<Response, ApiError> {
    if !state.config.api.demo {
        return Err(ApiError::NotFound("route"));
    }
    let assistant = match q.assistant {
        Some(id) => Some(id),
        None => db::assistants::newest_id_named(&state.pool, "Demo").await?,
    };
    let widget = match assistant {
        Some(id) => format!(
            r#"<chatq-chat mode="inline" heading="chatq demo" assistant-name="Demo assistant" token-url="/demo/token" assistant="{id}"></chatq-chat>"#
        ),
        None => "<p><strong>No demo assistant yet:</strong> create an assistant named \"Demo\" or open \
                 <code>/demo?assistant=&lt;assistant id&gt;</code>.</p>"
            .to_string(),
    };
    let page = DEMO_PAGE
        .replace("__SRC__", &format!("/widget/{}/chatq.js", WIDGET.version))
        .replace("__INTEGRITY__", &WIDGET.integrity)
        .replace("__WIDGET__", &widget);
    let mut response = axum::response::Html(page).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Trusted Types: the page fails loudly if any script assigns HTML strings to the DOM.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; require-trusted-types-for 'script'; object-src 'none'",
        ),
    );
    Ok(response)
}

const VISITOR_COOKIE: &str = "chatq_demo_visitor";
const DEMO_KEY_NAME: &str = "chatq-demo";
const DEMO_TOKEN_TTL_SECONDS: i64 = 3600;

/// The demo visitor from the cookie, when it is one this endpoint set.
fn visitor_from(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        let valid = name == VISITOR_COOKIE
            && value.starts_with("demo-")
            && value.len() <= 64
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        valid.then(|| value.to_string())
    })
}

/// The demo's token endpoint, as a site's backend would write it: it holds a client key (the
/// demo's own, created on first use) and signs a user token for the visitor, who is a random
/// id kept in a cookie.
async fn demo_token(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.config.api.demo {
        return Err(ApiError::NotFound("route"));
    }
    let secret = state
        .config
        .auth
        .token_secret
        .as_ref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("CHATQ_TOKEN_SECRET is not set")))?;
    let key_id = match db::keys::oldest_active_client_named(&state.pool, DEMO_KEY_NAME).await? {
        Some(id) => id,
        None => db::keys::create(&state.pool, Role::Client, DEMO_KEY_NAME).await?.1.id,
    };
    let (visitor, new_visitor) = match visitor_from(&headers) {
        Some(v) => (v, false),
        None => (format!("demo-{}", Uuid::now_v7().simple()), true),
    };
    let expires_at = Utc::now() + chrono::Duration::seconds(DEMO_TOKEN_TTL_SECONDS);
    let token = user_token::sign(secret.expose_secret(), key_id, &visitor, expires_at.timestamp());
    let mut response = axum::Json(json!({ "token": token, "expires_at": expires_at })).into_response();
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if new_visitor {
        let cookie = format!("{VISITOR_COOKIE}={visitor}; Path=/demo; Max-Age=2592000; HttpOnly; SameSite=Strict");
        out.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("the cookie is ASCII"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_joined_module_keeps_the_entry_exports_and_drops_sibling_imports() {
        let joined = join_modules(&[
            ("a.js", "// @ts-check\nexport const A = 1;\nexport function f() {}\n"),
            ("main.js", "import { A, f } from \"./a.js\";\nexport const B = A;\nf();\n"),
        ]);
        assert!(joined.contains("\nconst A = 1;\nfunction f() {}\n"), "{joined}");
        assert!(joined.contains("\nexport const B = A;\nf();\n"), "{joined}");
        assert!(!joined.contains("import "), "{joined}");
    }

    #[test]
    fn every_widget_import_is_one_line_of_a_sibling_module_listed_before_it() {
        for (i, (name, source)) in MODULES.iter().enumerate() {
            for line in source.lines().filter(|l| l.trim_start().starts_with("import ")) {
                let target = line
                    .strip_prefix("import ")
                    .and_then(|l| l.split_once(" from \"./"))
                    .and_then(|(_, rest)| rest.strip_suffix("\";"))
                    .unwrap_or_else(|| {
                        panic!("{name}: an import must be one line `import {{…}} from \"./x.js\";`: {line}")
                    });
                assert!(
                    MODULES[..i].iter().any(|(m, _)| *m == target),
                    "{name} imports {target}, which must be listed before it in MODULES"
                );
            }
            assert!(
                !source.contains("innerHTML") && !source.contains("outerHTML"),
                "{name} must build DOM nodes, not HTML"
            );
        }
    }

    #[test]
    fn the_visitor_cookie_is_read_only_when_it_is_one_of_ours() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; chatq_demo_visitor=demo-abc123"));
        assert_eq!(visitor_from(&h).as_deref(), Some("demo-abc123"));
        h.insert(header::COOKIE, HeaderValue::from_static("chatq_demo_visitor=admin"));
        assert_eq!(visitor_from(&h), None);
        h.insert(header::COOKIE, HeaderValue::from_static("chatq_demo_visitor=demo-<script>"));
        assert_eq!(visitor_from(&h), None);
    }
}
